"""Model zoo: ``build(name, dataset, **options)``.

Every model is an :class:`torch.nn.Module` that maps a batch of inputs of shape
``(N, *input_shape)`` (or the same data flattened to ``(N, prod(input_shape))``) to outputs of
shape ``(N, num_outputs)``, where ``num_outputs`` is the number of classes, or 1 for regression
(``num_classes is None``). Outputs are raw scores (logits); the loss decides what they mean.

Names (see :func:`available`):

==================  ==========================================================================
``linear``          one affine layer on the flattened input (:class:`LinearModel`)
``logistic``        the same layer; with a cross-entropy loss it *is* (multinomial) logistic
                    regression, so it differs from ``linear`` only by name
``mlp``             fully connected ReLU network (:class:`MLP`); MNIST-1D ``MLPBase`` by default
``cnn``             :class:`CNN1d` for 1-D inputs (MNIST-1D ``ConvBase``), :class:`CNN2d` for images
``scale_invariant`` normalised bias-free MLP with a fixed last layer (:class:`ScaleInvariantMLP`),
                    so that L(cΦ) = L(Φ) for its trainable weights — SPEC §4.5
``resnet``          CIFAR ResNet-(6n+2) with BatchNorm (:class:`ResNet`), He et al. 2016
==================  ==========================================================================

The ``dataset`` argument of :func:`build` only needs two facts, its ``input_shape`` (without the
batch dimension) and ``num_classes`` (``None`` for regression). :func:`spec_of` reads them from a
:class:`DataSpec`, a mapping, any object with those attributes (e.g. the data package's data
sets), or a known data-set name (``"mnist1d"``, ``"digits"``, ``"mnist"``, ``"cifar10"``).

Per-example gradients: every model except ``resnet`` treats the examples of a batch
independently, so per-example gradients are well defined (``torch.func.vmap`` works). The ResNet's
BatchNorm couples the examples of a batch in training mode.

Initialisation is PyTorch's default unless a class says otherwise. ``build(..., seed=s)`` draws
the initial weights from a private RNG seeded with ``s`` (the global torch RNG state is saved and
restored around construction, so it is left untouched); with ``seed=None`` the current global
torch RNG is used and advanced.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CNN1d",
    "CNN2d",
    "DataSpec",
    "KNOWN_SPECS",
    "LinearModel",
    "MLP",
    "ResNet",
    "ScaleInvariantMLP",
    "available",
    "build",
    "from_callable",
    "register",
    "spec_of",
]


# ---------------------------------------------------------------------------------------------
# Data spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data.

    ``input_shape``: shape of one example, without the batch dimension, e.g. ``(40,)`` for
    MNIST-1D or ``(3, 32, 32)`` for CIFAR-10. ``num_classes``: number of classes (the model then
    outputs that many logits), or ``None`` for regression (one output).
    """

    input_shape: tuple[int, ...]
    num_classes: int | None

    def __post_init__(self) -> None:
        try:
            shape = tuple(int(s) for s in self.input_shape)
        except TypeError as e:
            raise ValueError(
                f"input_shape must be a tuple of positive ints, got {self.input_shape!r}"
            ) from e
        if len(shape) == 0 or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape}")
        object.__setattr__(self, "input_shape", shape)
        nc = self.num_classes
        if nc is not None:
            if isinstance(nc, bool) or int(nc) != nc or int(nc) < 1:
                raise ValueError(
                    f"num_classes must be None (regression) or an int >= 1, got {nc!r}"
                )
            object.__setattr__(self, "num_classes", int(nc))

    @property
    def num_outputs(self) -> int:
        """Width of the model output: ``num_classes``, or 1 for regression."""
        return 1 if self.num_classes is None else self.num_classes

    @property
    def num_inputs(self) -> int:
        """Number of input features after flattening."""
        return math.prod(self.input_shape)


#: Specs of the standard data sets, for building a model by data-set name only.
KNOWN_SPECS: dict[str, DataSpec] = {
    "mnist1d": DataSpec((40,), 10),
    "digits": DataSpec((1, 8, 8), 10),
    "mnist": DataSpec((1, 28, 28), 10),
    "cifar10": DataSpec((3, 32, 32), 10),
}


def spec_of(dataset: object) -> DataSpec:
    """Read ``input_shape`` and ``num_classes`` from ``dataset``.

    Accepts a :class:`DataSpec`; a mapping with keys ``"input_shape"`` and (optionally)
    ``"num_classes"``; any object with those attributes (a missing ``num_classes`` means
    regression); or the name of a data set in :data:`KNOWN_SPECS` (case, ``-`` and ``_``
    ignored). Raises ``ValueError`` when no input shape can be found or the values are invalid.
    """
    if isinstance(dataset, DataSpec):
        return dataset
    if isinstance(dataset, str):
        key = dataset.lower().replace("-", "").replace("_", "")
        if key not in KNOWN_SPECS:
            raise ValueError(
                f"unknown data set name {dataset!r}; known names: {sorted(KNOWN_SPECS)} "
                "(or pass an object with input_shape and num_classes)"
            )
        return KNOWN_SPECS[key]
    if isinstance(dataset, Mapping):
        shape = dataset.get("input_shape")
        num_classes = dataset.get("num_classes")
    else:
        shape = getattr(dataset, "input_shape", None)
        num_classes = getattr(dataset, "num_classes", None)
    if shape is None:
        raise ValueError(
            f"cannot read input_shape from {type(dataset).__name__}: pass a DataSpec, a mapping "
            "or an object with attributes input_shape (tuple) and num_classes (int or None)"
        )
    if isinstance(shape, int):
        shape = (shape,)
    return DataSpec(tuple(shape), num_classes)


# ---------------------------------------------------------------------------------------------
# Option checking
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"option {name} must be an int >= {minimum}, got {value!r}")
    return value


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def _activation(name: object) -> nn.Module:
    if not isinstance(name, str) or name.lower() not in _ACTIVATIONS:
        raise ValueError(f"option activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name.lower()]()


class _Model(nn.Module):
    """Common base: remembers the data spec and reshapes inputs to ``(N, *input_shape)``."""

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] = spec.input_shape
        self.num_classes: int | None = spec.num_classes
        self.num_outputs: int = spec.num_outputs

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        """View ``x`` (flattened or not) as ``(N, *input_shape)``."""
        return x.reshape(x.shape[0], *self.input_shape)


# ---------------------------------------------------------------------------------------------
# Linear / logistic
# ---------------------------------------------------------------------------------------------


class LinearModel(_Model):
    """One affine layer ``W x + b`` on the flattened input.

    Outputs ``num_classes`` scores (1 for regression). Used for both ``linear`` (with a squared
    loss: linear regression) and ``logistic`` (with cross-entropy: multinomial logistic
    regression, the MNIST-1D ``LinearBase`` of Greydanus 2020). ``bias=False`` drops ``b``.
    """

    def __init__(self, spec: DataSpec, bias: bool = True) -> None:
        super().__init__(spec)
        self.linear = nn.Linear(spec.num_inputs, spec.num_outputs, bias=bool(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))


# ---------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------


class MLP(_Model):
    """Fully connected network on the flattened input.

    ``depth`` hidden layers of ``width`` units, each ``Linear`` (with bias) then ``activation``,
    then a ``Linear`` to ``num_outputs``. With ``residual=True`` hidden layers 2..depth become
    ``h ← h + act(W h + b)``, which is the MNIST-1D ``MLPBase`` of Greydanus 2020
    (``depth=2, width=100, residual=True``: 40·100+100 + 100·100+100 + 100·10+10 = 15,210
    parameters; the residual changes no parameter count).
    """

    def __init__(
        self,
        spec: DataSpec,
        depth: int = 2,
        width: int = 100,
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__(spec)
        depth = _check_int("depth", depth, 1)
        width = _check_int("width", width, 1)
        _activation(activation)  # validate early
        self.residual = bool(residual)
        sizes = [spec.num_inputs] + [width] * depth
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.acts = nn.ModuleList(_activation(activation) for _ in range(depth))
        self.head = nn.Linear(width, spec.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for i, (layer, act) in enumerate(zip(self.hidden, self.acts, strict=True)):
            z = act(layer(h))
            h = h + z if (self.residual and i > 0) else z
        return self.head(h)


# ---------------------------------------------------------------------------------------------
# CNNs
# ---------------------------------------------------------------------------------------------


def _conv_out(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(_Model):
    """1-D CNN, the MNIST-1D ``ConvBase`` of Greydanus 2020 by default.

    Input ``(N, L)`` (or ``(N, C, L)`` for an ``input_shape`` ``(C, L)``). Conv layers with
    ``channels[i]`` filters, kernel 5 for the first and 3 for the rest, stride 2, padding 1, each
    followed by ReLU; then the flattened features go through one ``Linear`` to the outputs.
    For MNIST-1D (L = 40) the lengths are 40 → 19 → 10 → 5, so the head sees 25·5 = 125 features;
    parameters 25·5+25 + 2·(25·25·3+25) + 125·10+10 = 5,210.
    """

    def __init__(self, spec: DataSpec, channels: int | Sequence[int] = 25, layers: int = 3) -> None:
        super().__init__(spec)
        shape = spec.input_shape
        if len(shape) == 1:
            in_ch, length = 1, shape[0]
        elif len(shape) == 2:
            in_ch, length = shape
        else:  # pragma: no cover - build() routes 3-D shapes to CNN2d
            raise ValueError(f"CNN1d needs input_shape (L,) or (C, L), got {shape}")
        chans = _channel_list(channels, _check_int("layers", layers, 1))
        self._conv_shape = (in_ch, length)
        convs: list[nn.Module] = []
        c_prev = in_ch
        for i, c in enumerate(chans):
            k = 5 if i == 0 else 3
            new_len = _conv_out(length, k, 2, 1)
            if new_len < 1:
                # only the kernel-5 first layer can fail (k=3, p=1 maps length >= 1 to >= 1)
                raise ValueError(
                    f"cnn (1-D) needs input length >= 3 for its kernel-5 first layer, "
                    f"got input_shape {shape}"
                )
            convs += [nn.Conv1d(c_prev, c, k, stride=2, padding=1), nn.ReLU()]
            c_prev, length = c, new_len
        self.features = nn.Sequential(*convs)
        self.head = nn.Linear(c_prev * length, spec.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(x.shape[0], *self._conv_shape))
        return self.head(h.flatten(1))


class CNN2d(_Model):
    """Small 2-D CNN for images ``(C, H, W)``.

    One block per entry of ``channels`` (default ``(32, 64)``): 3×3 conv (padding 1) → ReLU →
    2×2 max-pool, then one ``Linear`` from the flattened features to the outputs. For MNIST
    (1, 28, 28): 28 → 14 → 7, head 64·7·7 → 10; parameters 320 + 18,496 + 31,370 = 50,186.
    For digits (1, 8, 8): 8 → 4 → 2, head 256 → 10; 21,386 parameters. The usual
    "conv-pool-conv-pool-linear" baseline (cf. the PyTorch MNIST example), which reaches ≈ 99 %
    on MNIST.
    """

    def __init__(self, spec: DataSpec, channels: int | Sequence[int] = (32, 64)) -> None:
        super().__init__(spec)
        c_in, h, w = spec.input_shape
        chans = _channel_list(channels, 2)
        blocks: list[nn.Module] = []
        c_prev = c_in
        for c in chans:
            if h < 2 or w < 2:
                raise ValueError(
                    f"option channels: {len(chans)} conv blocks each halve the image, too many "
                    f"for input_shape {spec.input_shape}; use at most "
                    f"{int(math.log2(min(spec.input_shape[1:])))} blocks"
                )
            blocks += [nn.Conv2d(c_prev, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_prev, h, w = c, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c_prev * h * w, spec.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self._batched(x)).flatten(1))


def _channel_list(channels: int | Sequence[int], default_len: int) -> list[int]:
    if isinstance(channels, int) and not isinstance(channels, bool):
        chans = [channels] * default_len
    elif isinstance(channels, Sequence) and not isinstance(channels, str) and len(channels) > 0:
        chans = list(channels)
    else:
        raise ValueError(
            f"option channels must be an int or a non-empty list of ints, got {channels!r}"
        )
    for c in chans:
        _check_int("channels", c, 1)
    return chans


# ---------------------------------------------------------------------------------------------
# Scale-invariant network (SPEC §4.5)
# ---------------------------------------------------------------------------------------------


def _normalise(h: torch.Tensor) -> torch.Tensor:
    """Per-example standardisation over the last dimension, no affine part and no ε.

    n(h) = (h − mean h) / rms(h − mean h). Exactly homogeneous of degree 0: n(c h) = n(h) for
    every c > 0 (an ε inside the square root would break exactness). Undefined only when all
    entries of h are equal, a null set for generic weights.
    """
    centred = h - h.mean(dim=-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True))


class ScaleInvariantMLP(_Model):
    """Scale-invariant MLP for the intrinsic-learning-rate experiments (SPEC §4.5).

    Architecture, on the flattened input x:  for i = 1..depth,
    ``z_i = relu(n(W_i z_{i-1}))`` with ``z_0 = x``, ``W_i`` a bias-free ``Linear`` (the trainable
    weights) and ``n`` the per-example normalisation of :func:`_normalise` (layer-norm without
    affine parameters and without ε); the output is ``P z_depth`` with ``P`` a FIXED random
    projection (buffer ``head``, entries N(0, 1/width), not a parameter, so optimizers and weight
    decay never see it).

    Invariances (exact in exact arithmetic; to rounding error in floating point):

    * each trainable weight separately: replacing ``W_i`` by ``c W_i`` for any c > 0 leaves the
      output for every input unchanged, because W_i only enters through n(W_i z_{i-1});
    * hence all trainable parameters jointly: f(cΦ) = f(Φ), so L(cΦ) = L(Φ) for any loss;
    * consequences: ⟨∇_{W_i} L, W_i⟩ = 0 for every layer, and ∇L(cΦ) = ∇L(Φ)/c (jointly or layer
      by layer); these hold per example too, since n acts on each example separately (no
      batch statistics), so per-example gradients are defined and invariant as well.

    Not invariant: the fixed head ``P`` (scaling it scales the logits), the input, and c ≤ 0.
    Needs ``width >= 2`` (the centred normalisation of a single unit is undefined).
    """

    def __init__(self, spec: DataSpec, depth: int = 2, width: int = 100) -> None:
        super().__init__(spec)
        depth = _check_int("depth", depth, 1)
        width = _check_int("width", width, 2)
        sizes = [spec.num_inputs] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.register_buffer("head", torch.randn(spec.num_outputs, width) / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = F.relu(_normalise(layer(h)))
        return h @ self.head.T


# ---------------------------------------------------------------------------------------------
# ResNet (He et al. 2016, CIFAR variant)
# ---------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus shortcut, then ReLU. Shortcut "option A" of He et al.:
    identity, or stride-2 subsampling with zero-padded extra channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.pad = c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_Model):
    """CIFAR ResNet-(6n+2) of He et al. 2016 (§4.2), for images ``(C, H, W)``.

    conv3×3(width)-BN-ReLU, three stages of n basic blocks with width, 2·width, 4·width channels
    (stride 2 at the start of stages 2 and 3), global average pooling, Linear to the outputs.
    ``depth`` ∈ {8, 14, 20, 32, 44, 56, ...} (6n+2), default 20; ``width`` default 16. Shortcuts
    are parameter-free (option A), so ResNet-20 has 269,722 parameters for 10 classes
    (the paper's 0.27M) and ResNet-8 has 75,290. Convolutions use He (Kaiming-normal, fan-out)
    initialisation; BatchNorm starts at weight 1, bias 0.

    BatchNorm in training mode uses batch statistics, so examples in a batch are coupled:
    per-example gradients are not independent of the batch (use ``model.eval()`` for that).
    """

    def __init__(self, spec: DataSpec, depth: int = 20, width: int = 16) -> None:
        super().__init__(spec)
        depth = _check_int("depth", depth, 8)
        if (depth - 2) % 6 != 0:
            raise ValueError(
                f"option depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}"
            )
        width = _check_int("width", width, 1)
        n = (depth - 2) // 6
        c_in = spec.input_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_prev = width
        for stage in range(3):
            c = width * 2**stage
            for b in range(n):
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(_BasicBlock(c_prev, c, stride))
                c_prev = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_prev, spec.num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(self._batched(x)))
        return self.head(h.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _build_linear(spec: DataSpec, bias: bool = True) -> nn.Module:
    return LinearModel(spec, bias=bias)


def _build_mlp(
    spec: DataSpec,
    depth: int = 2,
    width: int = 100,
    activation: str = "relu",
    residual: bool = False,
) -> nn.Module:
    return MLP(spec, depth=depth, width=width, activation=activation, residual=residual)


def _build_cnn(
    spec: DataSpec, channels: int | Sequence[int] | None = None, layers: int | None = None
) -> nn.Module:
    ndim = len(spec.input_shape)
    if ndim in (1, 2):
        if (
            layers is not None
            and isinstance(channels, Sequence)
            and not isinstance(channels, str)
            and len(channels) != layers
        ):
            raise ValueError(
                f"options channels (a list of {len(channels)}) and layers={layers} disagree; "
                "give layers only with an int channels"
            )
        return CNN1d(
            spec,
            channels=25 if channels is None else channels,
            layers=3 if layers is None else layers,
        )
    if ndim == 3:
        if layers is not None:
            raise ValueError("option layers applies to 1-D inputs only; for images give channels")
        return CNN2d(spec, channels=(32, 64) if channels is None else channels)
    raise ValueError(
        f"cnn supports input_shape (L,), (C, L) [Conv1d] or (C, H, W) [Conv2d], "
        f"got {spec.input_shape}"
    )


def _build_scale_invariant(spec: DataSpec, depth: int = 2, width: int = 100) -> nn.Module:
    return ScaleInvariantMLP(spec, depth=depth, width=width)


def _build_resnet(spec: DataSpec, depth: int = 20, width: int = 16) -> nn.Module:
    if len(spec.input_shape) != 3:
        raise ValueError(f"resnet needs an image input_shape (C, H, W), got {spec.input_shape}")
    return ResNet(spec, depth=depth, width=width)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "linear": _build_linear,
    "logistic": _build_linear,
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "scale_invariant": _build_scale_invariant,
    "resnet": _build_resnet,
}


_BUILTIN = frozenset(_REGISTRY)


def register(name: str, *, replace: bool = False) -> Callable[[Callable[..., nn.Module]],
                                                             Callable[..., nn.Module]]:
    """Decorator: make ``fn(spec, *, option=default, ...) -> nn.Module`` buildable by name.

    ``spec`` is the :class:`DataSpec` of the data; the other parameters are the model's
    options (what ``build(name, ds, **options)``, ``--model-opt`` and ``model_options``
    accept). ``name``: a non-empty string of letters, digits and ``_``; an already registered
    name raises ``ValueError`` unless ``replace=True`` (the built-in names cannot be replaced)::

        @sgdlab.models.register("tiny_gru")
        def tiny_gru(spec, hidden=32):
            return MyGRU(spec.input_shape, spec.num_outputs, hidden)
    """
    from sgdlab.config import check_new_name

    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    check_new_name("model", key, available(), _BUILTIN, replace)

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(fn):
            raise ValueError(f"model {key!r}: register a callable, got {type(fn).__name__}")
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ValueError(f"model {key!r}: the builder must take the DataSpec as its first "
                             "positional parameter")
        _REGISTRY[key] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names accepted by :func:`build` (the built-in models, then registered ones)."""
    return list(_REGISTRY)


def takes_spec(fn: Callable[..., object]) -> bool:
    """Whether a model callable takes the :class:`DataSpec` (it has a positional parameter
    without a default); a callable with none is called without it."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                          inspect.Parameter.POSITIONAL_OR_KEYWORD)
               and p.default is inspect.Parameter.empty for p in params)


def from_callable(fn: Callable[..., object], dataset: object | None, *,
                  seed: int | None = None, **options: object) -> nn.Module:
    """Build a model with a user's callable (an ``nn.Module`` class or a factory).

    ``fn(spec, **options)`` when it takes a positional parameter (``spec`` the
    :class:`DataSpec` of ``dataset``, via :func:`spec_of`), else ``fn(**options)``. With an
    int ``seed`` the weights are drawn from the torch RNG seeded with it inside
    ``torch.random.fork_rng`` (as :func:`build` does). Raises ``TypeError`` when the result is
    not an ``nn.Module``.
    """
    args = (spec_of(dataset),) if takes_spec(fn) else ()
    if seed is None:
        model = fn(*args, **options)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = fn(*args, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model callable returned {type(model).__name__}, "
                        "not a torch.nn.Module")
    return model


def build(name: str, dataset: object, *, seed: int | None = None, **options: object) -> nn.Module:
    """Build model ``name`` for ``dataset`` (anything :func:`spec_of` accepts).

    Options per model (defaults in brackets):

    * ``linear`` / ``logistic``: ``bias`` [True]
    * ``mlp``: ``depth`` [2] hidden layers, ``width`` [100], ``activation`` ["relu"; also tanh,
      gelu, sigmoid, softplus, identity], ``residual`` [False; True = MNIST-1D ``MLPBase``]
    * ``cnn``: 1-D inputs: ``channels`` [25] (int, or one int per layer), ``layers`` [3];
      images: ``channels`` [(32, 64)], one conv block per entry
    * ``scale_invariant``: ``depth`` [2], ``width`` [100, at least 2]
    * ``resnet``: ``depth`` [20, must be 6n+2], ``width`` [16]

    ``seed``: when an int, the weights are drawn from the torch RNG seeded with it, inside
    ``torch.random.fork_rng`` so the global RNG state is restored afterwards (same seed → identical
    model). When ``None``, the global torch RNG is used (and advanced).

    Raises ``ValueError`` for an unknown name (listing the known ones), an unknown option (listing
    the allowed ones), or an option value the model cannot use.
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    ctor = _REGISTRY[key]
    allowed = [p for p in inspect.signature(ctor).parameters if p != "spec"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {key!r}; allowed: {allowed or 'none'}"
        )
    spec = spec_of(dataset)
    if seed is None:
        return ctor(spec, **options)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"option seed must be an int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ctor(spec, **options)
