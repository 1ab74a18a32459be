"""sgdlab.integrations against the real Lightning and Hugging Face trainers, on tiny models built
from configs (nothing downloaded), CPU, a few steps. References: a float64 per-example autograd
loop at the parameters each step's gradient was computed at, captured by a separate callback."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def _reference(model: nn.Module, params: dict[str, torch.Tensor], examples, loss_of) -> dict:
    """tr Σ, ‖G‖² (unbiased), B_simple of a batch from a float64 per-example loop."""
    import copy

    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(params[n])
    ref.eval()       # dropout is 0 in these models; no BatchNorm
    names = [n for n, p in ref.named_parameters() if p.requires_grad]
    grads = []
    for ex in examples:
        ref.zero_grad()
        loss_of(ref, ex).sum().backward()
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p))
                                .reshape(-1) for n, p in ref.named_parameters() if n in names]))
    g = torch.stack(grads)
    b = g.shape[0]
    mean = g.mean(0)
    tr = b / (b - 1) * ((g * g).sum(1).mean() - mean @ mean)
    g2 = mean @ mean - tr / b
    return {"batch_size": b, "tr_sigma": float(tr), "g_norm_sq": float(g2),
            "b_simple": float(tr / g2) if g2 > 0 else None}   # undefined: sgdlab's null


def _close(rec: dict, ref: dict, rtol: float = 1e-8) -> None:
    assert rec["batch_size"] == ref["batch_size"]
    for k in ("tr_sigma", "g_norm_sq", "b_simple"):
        if ref[k] is None:
            assert rec[k] is None and k in rec["undefined"], k
        else:
            assert rec[k] == pytest.approx(ref[k], rel=rtol), k
    assert math.isfinite(rec["tr_sigma"]) and rec["tr_sigma"] > 0


def test_import_sgdlab_is_lazy():
    code = ("import sys, sgdlab, sgdlab.integrations; "
            "print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning', 'transformers')"
            " for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


# ---------------------------------------------------------------------------- Lightning

@pytest.fixture(scope="module")
def pl():
    return pytest.importorskip("lightning.pytorch")


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _pl_module(pl, seed=0):
    torch.manual_seed(seed)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return _ce(self(x), y).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    return Tiny()


def _pl_loader(n=16, bs=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False)


def _pl_trainer(pl, tmp_path, callbacks, max_steps, **kw):
    return pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path),
                      callbacks=callbacks, **kw)


def _pl_capture(pl, accum):
    class Capture(pl.Callback):
        """Parameters at each optimizer step's start and its micro-batches, keyed by the
        trainer's global_step after that step."""

        def __init__(self):
            self.params, self.batches = {}, {}

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            t = trainer.global_step + 1
            if batch_idx % accum == 0:
                self.params[t] = {n: p.detach().double().clone()
                                  for n, p in module.named_parameters()}
            self.batches.setdefault(t, []).append([b.clone() for b in batch])

    return Capture()


def test_lightning_accumulated_noise_scale_matches_float64_loop(pl, tmp_path):
    from sgdlab.integrations.lightning import MonitorCallback

    model = _pl_module(pl)
    cap = _pl_capture(pl, accum=2)
    cb = MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=2)
    _pl_trainer(pl, tmp_path, [cap, cb], max_steps=4, accumulate_grad_batches=2,
                precision="64-true").fit(model, _pl_loader())
    recs = [r for r in cb.records if r["name"] == "noise_scale"]
    assert [r["step"] for r in recs] == [2, 4]
    for r in recs:
        x = torch.cat([b[0] for b in cap.batches[r["step"]]])
        y = torch.cat([b[1] for b in cap.batches[r["step"]]])
        assert x.shape[0] == 8                                 # two micro-batches of 4
        ref = _reference(model.net, {k.removeprefix("net."): v
                                     for k, v in cap.params[r["step"]].items()},
                         list(zip(x.double(), y, strict=True)),
                         lambda m, ex: _ce(m(ex[0][None]), ex[1][None]))
        _close(r, ref)
        assert r["backward_scale"] == pytest.approx(1 / 8)    # .mean() over 4, then / 2


def test_lightning_training_unchanged(pl, tmp_path):
    from sgdlab.integrations.lightning import MonitorCallback

    finals = []
    for with_cb in (False, True):
        model = _pl_module(pl)
        cbs = [MonitorCallback(loss_fn=_ce, instruments=["noise_scale", "effective_lr"],
                               every=1)] if with_cb else []
        _pl_trainer(pl, tmp_path, cbs, max_steps=5, accumulate_grad_batches=2,
                    gradient_clip_val=0.01).fit(model, _pl_loader())
        if with_cb:
            assert [r["step"] for r in cbs[0].records if r["name"] == "noise_scale"] == \
                [1, 2, 3, 4, 5]
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)


def test_lightning_checkpoint_resume_continues(pl, tmp_path):
    from sgdlab.integrations.lightning import MonitorCallback

    def cb():
        return MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=2)

    full = cb()
    _pl_trainer(pl, tmp_path, [full], max_steps=8).fit(_pl_module(pl), _pl_loader())

    first = cb()
    trainer = _pl_trainer(pl, tmp_path, [first], max_steps=4)
    trainer.fit(_pl_module(pl), _pl_loader())
    path = tmp_path / "four.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["callbacks"][first.state_key]
    assert state["monitor"]["step_count"] == 4
    assert [r["step"] for r in state["records"]] == [2, 4]

    resumed = []
    for callbacks in ([cb()], []):
        model = _pl_module(pl, seed=5)
        _pl_trainer(pl, tmp_path, callbacks, max_steps=8).fit(model, _pl_loader(),
                                                              ckpt_path=str(path))
        resumed.append([p.detach().clone() for p in model.parameters()])
        if callbacks:
            second = callbacks[0]
            assert second.monitor.step_count == 8
            assert [r["step"] for r in second.records] == [2, 4, 6, 8]
            assert second.records[:2] == full.records[:2]    # restored from the checkpoint
    # the callback changes nothing on resume either. Lightning's resume from a checkpoint
    # saved after fit() does not continue the uninterrupted run (the weights after step 8
    # differ by 0.11 with or without the callback), so the numbers of steps 6 and 8 are not
    # compared with the uninterrupted run's
    for a, b in zip(*resumed, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- Hugging Face

@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("accelerate")
    return pytest.importorskip("transformers")


def _hf_model(tf, seed=0):
    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0,
                        attention_probs_dropout_prob=0, max_position_embeddings=16,
                        num_labels=3)
    return tf.BertForSequenceClassification(cfg)


class _HFData(torch.utils.data.Dataset):
    def __init__(self, n=24, seq=6):
        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(1, 50, (n, seq), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _hf_ce(outputs, inputs):
    return F.cross_entropy(outputs.logits, inputs["labels"], reduction="none")


def _hf_train(tf, tmp_path, callbacks, model, max_steps, **kw):
    args = tf.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=max_steps, per_device_train_batch_size=4,
        learning_rate=0.1, lr_scheduler_type="constant", optim="sgd", weight_decay=0.0,
        warmup_steps=0, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0, **kw)
    trainer = tf.Trainer(model=model, args=args, train_dataset=_HFData(), callbacks=callbacks)
    trainer.train()
    return trainer


def _hf_capture(tf):
    class Capture(tf.TrainerCallback):
        def __init__(self):
            self.params, self.inputs, self.t = {}, {}, None

        def on_train_begin(self, args, state, control, model=None, **kw):
            model.register_forward_pre_hook(self._hook, with_kwargs=True)

        def on_step_begin(self, args, state, control, model=None, **kw):
            self.t = state.global_step + 1
            self.params[self.t] = {n: p.detach().double().clone()
                                   for n, p in model.named_parameters()}

        def _hook(self, module, args, kwargs):
            if module.training and torch.is_grad_enabled():
                self.inputs.setdefault(self.t, []).append(
                    {k: v.clone() for k, v in kwargs.items() if k in ("input_ids", "labels")})

    return Capture()


def test_hf_accumulated_clipped_noise_scale_matches_float64_loop(tf, tmp_path):
    from sgdlab.integrations.transformers import MonitorCallback

    model = _hf_model(tf).double()
    cap = _hf_capture(tf)
    cb = MonitorCallback(loss_fn=_hf_ce, instruments=["noise_scale"], every=1)
    trainer = _hf_train(tf, tmp_path, [cap, cb], model, max_steps=3,
                        gradient_accumulation_steps=2, max_grad_norm=1e-3)   # clipping active
    assert trainer.state.global_step == 3
    recs = [r for r in cb.records if r["name"] == "noise_scale"]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        mbs = cap.inputs[r["step"]]
        assert len(mbs) == 2
        ids = torch.cat([m["input_ids"] for m in mbs])
        labels = torch.cat([m["labels"] for m in mbs])
        ref = _reference(model, cap.params[r["step"]], list(zip(ids, labels, strict=True)),
                         lambda m, ex: _hf_ce(m(input_ids=ex[0][None]), {"labels": ex[1][None]}))
        _close(r, ref)


def test_hf_training_unchanged_and_sharpness(tf, tmp_path):
    from sgdlab.integrations.transformers import MonitorCallback

    finals = []
    for with_cb in (False, True):
        model = _hf_model(tf)
        cbs = [MonitorCallback(loss_fn=_hf_ce, instruments=[
            "noise_scale", "sharpness:k=2", "hessian_trace:samples=4"],
            every=2, on_error="raise")] if with_cb else []
        _hf_train(tf, tmp_path, cbs, model, max_steps=4, gradient_accumulation_steps=2,
                  max_grad_norm=0.05)
        if with_cb:
            recs = cbs[0].records
            assert [(r["name"], r["step"]) for r in recs] == [
                (n, t) for t in (2, 4) for n in ("noise_scale", "sharpness", "hessian_trace")]
            for r in recs:
                if r["name"] == "sharpness":    # model(**inputs) through curvature_problem
                    lam = r["eigenvalues"]
                    assert len(lam) == 2 and lam[0] >= lam[1] and lam[0] == r["lambda_max"]
                    assert all(math.isfinite(v) and v != 0 for v in lam)
                elif r["name"] == "hessian_trace":
                    assert r["samples"] == 4 and math.isfinite(r["trace"]) and r["trace_se"] > 0
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)


def test_hf_ggn_sharpness_is_refused_with_one_line(tf, tmp_path, capsys):
    """curvature=ggn needs one output tensor; a transformers model returns a ModelOutput: the
    instrument is disabled with one line (never a number), the others and training go on."""
    from sgdlab.integrations.transformers import MonitorCallback

    cb = MonitorCallback(loss_fn=_hf_ce, instruments=["noise_scale", "sharpness:curvature=ggn"],
                         every=1)
    _hf_train(tf, tmp_path, [cb], _hf_model(tf), max_steps=2)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sgdlab:")]
    assert len(err) == 1 and err[0].startswith(
        'sgdlab: instrument sharpness disabled: curvature="ggn" needs a model whose output is '
        "one floating-point tensor")
    assert [(r["name"], r["step"]) for r in cb.records] == [("noise_scale", 1),
                                                             ("noise_scale", 2)]
