"""Small fixed-seed data for the user-component tests: int64 token sequences for the zoo's
TinyTransformer/EmbeddingBagLike and float sequences for TinyGRU (tests/_zoo.py)."""

from __future__ import annotations

import torch

from _zoo import CLASSES


def tokens(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 token sequences (n, 5) in 1..19; the label is the first token mod CLASSES."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 20, (n, 5), generator=g)
    return x, x[:, 0] % CLASSES


def sequences(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float sequences (n, 7, 3); labels in 0..3 from the signs of two feature sums."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, 3, generator=g)
    return x, (x[:, :, 0].sum(1) > 0).long() + 2 * (x[:, :, 1].sum(1) > 0).long()
