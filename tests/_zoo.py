"""Small architectures sgdlab does not ship, and an independent per-example reference.

Every instrument is tested on models it was not written for: attention (with the module's own
parameters beside an ``nn.MultiheadAttention``), recurrent layers, grouped/dilated convs with
every padding mode, embeddings with ``padding_idx``, tied input/output embeddings, the norm
layers, BatchNorm in eval mode, a parameter used directly through ``F.linear`` and a submodule
called twice. :func:`cases` gives each as ``(model, x, y)`` with a per-example cross-entropy;
:func:`per_example_reference` is the ground truth: a float64 loop of one autograd backward per
example.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 5
VOCAB = 20


def per_example_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, shape (B,)."""
    return F.cross_entropy(out, y, reduction="none")


class TinyTransformer(nn.Module):
    """Token embedding (``padding_idx=0``) + a learned position parameter owned by the root
    module + one ``nn.TransformerEncoderLayer`` + mean pooling + a linear head."""

    def __init__(self, vocab: int = VOCAB, d: int = 8, heads: int = 2, seq: int = 5,
                 classes: int = CLASSES, norm_first: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        self.layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=12, dropout=0.0,
                                                batch_first=True, norm_first=norm_first)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens) + self.pos
        return self.head(self.layer(h).mean(1))


class OwnParamAttention(nn.Module):
    """A module with a parameter of its own beside an ``nn.MultiheadAttention`` (whose
    ``out_proj`` is used through its weight, never called)."""

    def __init__(self, d: int = 6, heads: int = 2, seq: int = 4, classes: int = CLASSES) -> None:
        super().__init__()
        self.pos = nn.Parameter(0.1 * torch.randn(seq, d))
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(1))


class TinyRNN(nn.Module):
    """``nn.GRU`` or ``nn.LSTM`` (batch_first, 2 layers) on float sequences + a linear head on
    the last output."""

    def __init__(self, kind: str = "gru", features: int = 3, hidden: int = 5,
                 classes: int = CLASSES) -> None:
        super().__init__()
        cls = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[kind]
        self.rnn = cls(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def TinyGRU(**kw) -> TinyRNN:  # noqa: N802 - a class-like factory
    return TinyRNN("gru", **kw)


def TinyLSTM(**kw) -> TinyRNN:  # noqa: N802
    return TinyRNN("lstm", **kw)


class ConvZoo1d(nn.Module):
    """Conv1d with groups, dilation and a non-zero padding mode, then a strided one."""

    def __init__(self, padding_mode: str = "reflect", classes: int = CLASSES) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode=padding_mode)
        self.c2 = nn.Conv1d(6, 4, 2, stride=2, padding="valid", bias=False)
        self.head = nn.Linear(4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        return self.head(h.flatten(1))


class ConvZoo2d(nn.Module):
    """Conv2d with groups, dilation, ``padding="same"`` and a padding mode; a depthwise one."""

    def __init__(self, padding_mode: str = "circular", classes: int = CLASSES) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding="same", dilation=(1, 2), padding_mode=padding_mode)
        self.c2 = nn.Conv2d(4, 4, (2, 3), stride=(2, 1), groups=4)
        self.head = nn.Linear(4 * 3 * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.c2(torch.tanh(self.c1(x))))
        return self.head(h.flatten(1))


class EmbeddingBagLike(nn.Module):
    """Embedding with ``padding_idx`` (its row gets no gradient), mean over tokens, head."""

    def __init__(self, vocab: int = VOCAB, d: int = 6, classes: int = CLASSES) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=1)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(tokens).mean(1)))


class TiedLM(nn.Module):
    """Tied input/output embeddings: logits = F.linear(h, emb.weight) over the vocabulary
    (the weight is used inside its module *and* outside it)."""

    def __init__(self, vocab: int = CLASSES, d: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.emb(tokens).mean(1)))
        return F.linear(h, self.emb.weight)


class NormZoo(nn.Module):
    """LayerNorm, GroupNorm and RMSNorm (all affine) between Linear layers."""

    def __init__(self, d: int = 8, classes: int = CLASSES) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, d)
        self.ln = nn.LayerNorm(d)
        self.gn = nn.GroupNorm(2, d)
        self.rms = nn.RMSNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(torch.tanh(self.l1(x)))
        h = self.rms(self.gn(h))
        return self.head(h)


class BatchNormEval(nn.Module):
    """BatchNorm1d between Linear layers; used in eval mode (running statistics)."""

    def __init__(self, d: int = 7, classes: int = CLASSES) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, d)
        self.bn = nn.BatchNorm1d(d)
        self.head = nn.Linear(d, classes)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.l1(x))))


class DirectParam(nn.Module):
    """Parameters used directly with ``F.linear`` in the root's forward, beside a Linear."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(7, 6))
        self.b = nn.Parameter(0.1 * torch.randn(7))
        self.head = nn.Linear(7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(F.linear(x, self.w, self.b)))


class TwiceCalled(nn.Module):
    """One Linear called twice in the forward (its gradient has cross terms)."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def _tokens(gen: torch.Generator, b: int, seq: int, vocab: int = VOCAB) -> torch.Tensor:
    t = torch.randint(0, vocab, (b, seq), generator=gen)
    t[0, -1] = 0        # padding tokens appear
    t[1, 0] = 1
    return t


def cases(batch: int = 6, seed: int = 0) -> dict[str, tuple[nn.Module, torch.Tensor,
                                                           torch.Tensor]]:
    """name → (model in float64, x, y) with class labels in range(CLASSES); fixed seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (batch,), generator=gen)
    seqf = torch.randn(batch, 4, 3, generator=gen, dtype=torch.float64)
    flat = torch.randn(batch, 6, generator=gen, dtype=torch.float64)
    out: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {
        "transformer_post_norm": (TinyTransformer(norm_first=False), _tokens(gen, batch, 5), y),
        "transformer_pre_norm": (TinyTransformer(norm_first=True), _tokens(gen, batch, 5), y),
        "mha_own_params": (OwnParamAttention(),
                           torch.randn(batch, 4, 6, generator=gen, dtype=torch.float64), y),
        "gru": (TinyGRU(), seqf, y),
        "lstm": (TinyLSTM(), seqf, y),
        "rnn_tanh": (TinyRNN("rnn"), seqf, y),
        "conv1d_reflect": (ConvZoo1d("reflect"),
                           torch.randn(batch, 4, 8, generator=gen, dtype=torch.float64), y),
        "conv1d_replicate": (ConvZoo1d("replicate"),
                             torch.randn(batch, 4, 8, generator=gen, dtype=torch.float64), y),
        "conv2d_circular": (ConvZoo2d("circular"),
                            torch.randn(batch, 2, 6, 4, generator=gen, dtype=torch.float64), y),
        "conv2d_zeros": (ConvZoo2d("zeros"),
                         torch.randn(batch, 2, 6, 4, generator=gen, dtype=torch.float64), y),
        "embedding_padding_idx": (EmbeddingBagLike(), _tokens(gen, batch, 4), y),
        "tied_embeddings": (TiedLM(), _tokens(gen, batch, 3, vocab=CLASSES), y),
        "norms": (NormZoo(), flat, y),
        "batchnorm_eval": (BatchNormEval(), flat, y),
        "direct_param": (DirectParam(), flat, y),
        "twice_called": (TwiceCalled(), flat, y),
    }
    for model, _, _ in out.values():
        model.double()
    out["batchnorm_eval"][0].eval()
    return out


def per_example_reference(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                          y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                    list[dict[str, torch.Tensor]]]:
    """Ground truth by one autograd backward per example (run it on a float64 model).

    Returns (‖g_b‖² of shape (B,), {name: Σ_b g_b²}, [per-example {name: g_b}]) over the
    parameters that require grad, g_b = ∇ℓ_b of the example's own loss.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = []
    for b in range(x.shape[0]):
        loss = loss_fn(model(x[b:b + 1]), y[b:b + 1]).sum()
        gs = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        grads.append({n: (g if g is not None else torch.zeros_like(p)).detach()
                      for (n, p), g in zip(named, gs, strict=True)})
    norms = torch.stack([sum(g.pow(2).sum() for g in gb.values()) for gb in grads])
    sum_sq = {n: sum(gb[n].pow(2) for gb in grads) for n, _ in named}
    return norms, sum_sq, grads


def train_watched(model_fn: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor,
                  steps: int, monitor_kw: dict | None = None, seed: int = 0):
    """``steps`` of SGD (momentum 0.9, weight decay 1e-3) on four interleaved slices of
    (x, y), with a :class:`sgdlab.Monitor` built from ``monitor_kw`` (None: no monitor, the
    bare loop); returns (model, monitor). Comparing the two is the "monitoring never changes
    training" test."""
    import sgdlab

    torch.manual_seed(seed)
    model = model_fn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    mon = (sgdlab.Monitor(model, opt, per_example_ce, **monitor_kw)
           if monitor_kw is not None else None)
    for t in range(steps):
        xb, yb = x[t % 4::4], y[t % 4::4]
        opt.zero_grad()
        with mon.step(xb, yb) if mon else torch.enable_grad():
            per_example_ce(model(xb), yb).mean().backward()
        opt.step()
    if mon:
        mon.close()
    return model, mon


def dense_hessian(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                  y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean loss (1/B) Σ_b loss_fn(model(x), y)_b in the model's
    parameters (flattened in ``named_parameters`` order), by
    ``torch.autograd.functional.hessian`` (one double backward per row) under the math SDPA
    backend: the reference for every curvature probe, itself checked against central finite
    differences of the gradient (tests/test_zoo_references.py).

    Not ``torch.func.hessian``: in torch 2.13 it (and ``jacrev(jacrev(·))``) is wrong through
    LayerNorm — an asymmetric matrix, 0.08 off finite differences on a 4-6-3 MLP with one
    LayerNorm (max |H| = 0.67), where the autograd Hessian agrees with them to 1e-9."""
    from sgdlab.probes.curvature import math_sdpa

    params = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def loss_of(vec):
        chunks, i = {}, 0
        for n, p in params.items():
            chunks[n] = vec[i:i + p.numel()].view_as(p)
            i += p.numel()
        return loss_fn(torch.func.functional_call(model, chunks, (x,)), y).mean()

    with math_sdpa():
        return torch.autograd.functional.hessian(loss_of, flat)


def _flat_call(model: nn.Module, names: list[str] | None = None):
    """(flat parameter vector of ``names`` — default all, ``named_parameters`` order —, a
    function vec → the model with those parameters replaced, called on x)."""
    params = dict(model.named_parameters())
    names = list(params) if names is None else names
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def call(vec, x):
        chunks, i = {}, 0
        for n in names:
            chunks[n] = vec[i:i + params[n].numel()].view_as(params[n])
            i += params[n].numel()
        return torch.func.functional_call(model, chunks, (x,))

    return flat, call


def dense_ggn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
              names: list[str] | None = None) -> torch.Tensor:
    """The generalised Gauss–Newton matrix G = Jᵀ H_ℓ J of the mean loss, formed densely (the
    reference for ``curvature="ggn"``): J = ∂f/∂Φ by ``torch.func.jacrev`` of the flattened
    output f = model(x) (under the math SDPA backend), H_ℓ in closed form —
    ``loss="ce"``: mean cross-entropy over the rows of f.reshape(-1, C) (R rows),
    H_ℓ = blockdiag_r (diag p_r − p_r p_rᵀ)/R with p_r = softmax of row r;
    ``loss="mse"``: mean over the rows of ½‖f_r − t_r‖², H_ℓ = I/R. ``names`` restricts Φ to
    those parameters (in the order given)."""
    from sgdlab.probes.curvature import math_sdpa

    flat, call = _flat_call(model, names)
    with math_sdpa():
        out = call(flat, x).detach()
        jac = torch.func.jacrev(lambda v: call(v, x).reshape(-1))(flat)
    c = out.shape[-1]
    rows = out.reshape(-1, c)
    r = rows.shape[0]
    if loss == "ce":
        p = torch.softmax(rows, dim=-1)
        blocks = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        h_out = torch.block_diag(*blocks) / r
    elif loss == "mse":
        h_out = torch.eye(r * c, dtype=rows.dtype) / r
    else:
        raise ValueError(f"loss must be 'ce' or 'mse', got {loss!r}")
    return (jac.T @ h_out @ jac).detach()


def dense_hessian_block(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
                        y: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The rows and columns of :func:`dense_hessian` that belong to the parameters ``names``
    (in ``named_parameters`` order): the diagonal block H_SS, cut out of the full matrix."""
    return cut_block(dense_hessian(model, loss_fn, x, y), model, names)


def cut_block(mat: torch.Tensor, model: nn.Module, names: list[str]) -> torch.Tensor:
    """The rows and columns of a (n, n) matrix over all parameters (``named_parameters``
    order) that belong to the parameters ``names``."""
    idx, i = [], 0
    for n, p in model.named_parameters():
        if n in names:
            idx.append(torch.arange(i, i + p.numel()))
        i += p.numel()
    idx = torch.cat(idx)
    return mat[idx][:, idx]
