"""Data sets held in memory and the mini-batch sampler (SPEC §1, §5).

``load(name, seed=0, **options)`` returns a :class:`Dataset` of torch tensors, normalised
with training-split statistics and deterministic for ``seed``. Known names:

========================  =======================================================  ==========
name                      inputs / targets                                          task
========================  =======================================================  ==========
``mnist1d``               (N, 40) / int64, 4000 train, 1000 test                    classif.
``digits``                (N, 1, 8, 8) / int64, 1437 / 360                          classif.
``mnist``                 (N, 1, 28, 28) / int64, 50k (60k) / 10k                   classif.
``cifar10``               (N, 3, 32, 32) / int64, 50k / 10k, from ``data_dir``       classif.
``linreg``                (N, dim) / float32 (N, 1); exact Φ*, L* in ``meta``        regression
``logreg``                (N, dim) / int64; optimum via :func:`logreg_optimum`      classif.
``quadratic_deep``        (N, 100) / empty (N, 0); Q, Φ*, L* in ``meta``             quadratic
========================  =======================================================  ==========

The user's own data: :func:`from_tensors` (tensors, integer token inputs kept as they are),
:class:`MapData` (map-style torch Datasets read by a DataLoader over the resumable sampler)
and :func:`as_data` (whatever the trainer's ``data=`` accepts).

Image sets take ``flatten=True`` for (N, C·H·W) inputs. :class:`BatchSampler` draws index
batches with replacement (i.i.d.) or by epoch shuffling, and resumes exactly from its
``state_dict()``. Every error about the data is a :class:`DataError` (a ``ValueError``) whose
message is one line naming the field and what is allowed.
"""

from . import cifar10 as _cifar10  # noqa: F401  (registers "cifar10")
from . import images as _images  # noqa: F401  (registers "digits", "mnist")
from . import mnist1d as _mnist1d  # noqa: F401  (registers "mnist1d")
from ._core import (
    TASKS,
    DataError,
    Dataset,
    cache_dir,
    from_tensors,
    load,
    names,
    options,
    register,
)
from ._unpickle import RestrictedUnpickler, UnsafePickleError, restricted_load
from .loader import BatchStream, MapData, as_data
from .sampler import MODES, BatchSampler
from .synthetic import (
    LinregOptimum,
    LogregOptimum,
    linreg_optimum,
    logreg_optimum,
    quadratic_deep_hessian,
    quadratic_loss,
)

__all__ = [
    "MODES",
    "TASKS",
    "BatchSampler",
    "BatchStream",
    "DataError",
    "Dataset",
    "LinregOptimum",
    "LogregOptimum",
    "MapData",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "as_data",
    "cache_dir",
    "from_tensors",
    "linreg_optimum",
    "load",
    "logreg_optimum",
    "names",
    "options",
    "quadratic_deep_hessian",
    "quadratic_loss",
    "register",
    "restricted_load",
]
