"""Scoped control of torch's intra-op thread count.

Small models are faster single-threaded: a step costs less than waking a second thread, and
torch's CPU kernels spin-wait, so on a busy 2-core machine two threads can be many times
slower than one. Experiments and probes set the count for a block and restore it after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
