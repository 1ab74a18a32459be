"""sgdlab.integrations against the real libraries (issue 9 §3): MonitorCallback in a real
lightning.Trainer and transformers.Trainer, each step's noise_scale record against a float64
per-example autograd loop at the parameters of that step (1e-8); accumulation gives the whole
batch; training is bit-identical with and without the callback; Lightning checkpoints carry
the callback state; import sgdlab stays lazy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _zoo import per_example_reference


def _reference_noise(norms, grads):
    bsz = norms.shape[0]
    g_hat = {n: sum(g[n] for g in grads) / bsz for n in grads[0]}
    g2 = float(sum(v.pow(2).sum() for v in g_hat.values()))
    tr = bsz / (bsz - 1) * (float(norms.mean()) - g2)
    g_norm_sq = g2 - tr / bsz
    b_simple = tr / g_norm_sq if g_norm_sq > 0 else float("inf")
    return {"tr_sigma": tr, "g_norm_sq": g_norm_sq, "b_simple": b_simple,
            "g_hat_norm_sq": g2, "batch_size": bsz}


def _assert_matches(rec, ref, rtol=1e-8):
    assert rec["batch_size"] == ref["batch_size"]
    for key in ("tr_sigma", "g_norm_sq", "b_simple", "g_hat_norm_sq"):
        assert rec[key] == pytest.approx(ref[key], rel=rtol), key


def test_import_sgdlab_is_lazy():
    code = ("import sys, sgdlab, sgdlab.integrations; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- Lightning
def _lightning():
    return pytest.importorskip("lightning")


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _make_module(L):  # noqa: N803
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return _ce(self(x), y).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)

    torch.manual_seed(0)
    return Tiny().double()


def _loader(n=32, batch=8):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def _capture_callback(L):  # noqa: N803
    class Capture(L.Callback):
        def __init__(self):
            self.batches, self.params, self.after, self.monitor_cb = {}, {}, [], None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            t = trainer.global_step + 1
            self.batches.setdefault(t, []).append([b.clone() for b in batch])
            self.params.setdefault(t, {k: v.detach().clone()
                                       for k, v in pl_module.net.state_dict().items()})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            recs = self.monitor_cb.records if self.monitor_cb is not None else []
            self.after.append((trainer.global_step, recs[-1]["step"] if recs else None))

    return Capture()


def _lightning_reference(L, cap, t):  # noqa: N803
    net = _make_module(L).net
    net.load_state_dict(cap.params[t])
    x = torch.cat([b[0] for b in cap.batches[t]])
    y = torch.cat([b[1] for b in cap.batches[t]])
    norms, _, grads = per_example_reference(net, _ce, x, y)
    return _reference_noise(norms, grads)


def _trainer(L, tmp_path, callbacks, max_steps=4, **kw):  # noqa: N803
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path,
                     accelerator="cpu", devices=1, callbacks=callbacks, **kw)


def test_lightning_noise_scale_matches_reference(tmp_path):
    L = _lightning()
    from sgdlab.integrations.lightning import MonitorCallback

    cb = MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=1)
    cap = _capture_callback(L)
    cap.monitor_cb = cb
    trainer = _trainer(L, tmp_path, [cap, cb])
    trainer.fit(_make_module(L), _loader())
    recs = cb.records
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert trainer.global_step == 4 and cb.monitor.step_count == 4
    assert cap.after == [(t, t) for t in (1, 2, 3, 4)]
    for rec in recs:
        _assert_matches(rec, _lightning_reference(L, cap, rec["step"]))


def test_lightning_accumulation_whole_batch(tmp_path):
    L = _lightning()
    from sgdlab.integrations.lightning import MonitorCallback

    cb = MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=1)
    cap = _capture_callback(L)
    trainer = _trainer(L, tmp_path, [cap, cb], max_steps=3, accumulate_grad_batches=2)
    trainer.fit(_make_module(L), _loader(n=48, batch=4))
    assert [r["step"] for r in cb.records] == [1, 2, 3] and trainer.global_step == 3
    for rec in cb.records:
        t = rec["step"]
        assert len(cap.batches[t]) == 2 and rec["batch_size"] == 8
        _assert_matches(rec, _lightning_reference(L, cap, t))
        half = _capture_callback(L)
        half.params[t], half.batches[t] = cap.params[t], cap.batches[t][:1]
        assert rec["tr_sigma"] != pytest.approx(_lightning_reference(L, half, t)["tr_sigma"],
                                                rel=1e-3)


def test_lightning_bit_identical(tmp_path):
    L = _lightning()
    from sgdlab.integrations.lightning import MonitorCallback

    runs = []
    for with_cb in (False, True):
        module = _make_module(L)
        cbs = [MonitorCallback(loss_fn=_ce, instruments=["noise_scale", "effective_lr"],
                               every=1)] if with_cb else []
        _trainer(L, tmp_path / str(with_cb), cbs, accumulate_grad_batches=2).fit(
            module, _loader(batch=4))
        runs.append([p.detach().clone() for p in module.parameters()])
    assert len(cbs[0].records) > 0
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_lightning_modelcheckpoint_resume(tmp_path):
    L = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sgdlab.integrations.lightning import MonitorCallback

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1,
                           filename="{step}")
    cb = MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=1)
    _trainer(L, tmp_path, [cb, ckpt], enable_checkpointing=True).fit(
        _make_module(L), _loader(n=16))
    full = [dict(r) for r in cb.records]
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    path = tmp_path / "ckpt" / "step=2.ckpt"
    saved = torch.load(path, weights_only=False)["callbacks"][cb.state_key]
    assert saved["monitor"]["step_count"] == 2
    assert saved["records"] == full[:2]
    cb2 = MonitorCallback(loss_fn=_ce, instruments=["noise_scale"], every=1)
    trainer = _trainer(L, tmp_path / "resume", [cb2])
    trainer.fit(_make_module(L), _loader(n=16), ckpt_path=path)
    assert trainer.global_step == 4 and cb2.monitor.step_count == 4
    assert [r["step"] for r in cb2.records] == [1, 2, 3, 4]
    assert cb2.records[:2] == full[:2]
    for a, b in zip(cb2.records[2:], full[2:], strict=True):
        assert a["tr_sigma"] == pytest.approx(b["tr_sigma"], rel=1e-10)


# ---------------------------------------------------------------- Hugging Face
def _transformers():
    pytest.importorskip("accelerate")
    return pytest.importorskip("transformers")


def _bert(tf):
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
    return tf.BertForSequenceClassification(cfg).double()


def _hf_loss(outputs, inputs):
    return F.cross_entropy(outputs.logits, inputs["labels"], reduction="none")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, seq=6):
        gen = torch.Generator().manual_seed(2)
        self.ids = torch.randint(1, 50, (n, seq), generator=gen)
        self.mask = torch.ones(n, seq, dtype=torch.long)
        self.mask[::3, -2:] = 0                      # some padded sequences
        self.labels = torch.randint(0, 3, (n,), generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i],
                "labels": self.labels[i]}


class _HFCapture:
    def __init__(self, tf):
        outer = self

        class CB(tf.TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                outer.state = state
                outer.handle = model.register_forward_pre_hook(outer.hook, with_kwargs=True)

            def on_train_end(self, args, state, control, **kw):
                outer.handle.remove()

        self.callback, self.inputs, self.params = CB(), {}, {}

    def hook(self, module, args, kwargs):
        if not (torch.is_grad_enabled() and module.training):
            return
        t = self.state.global_step + 1
        self.inputs.setdefault(t, []).append(
            {k: v.clone() for k, v in kwargs.items()
             if k in ("input_ids", "attention_mask", "labels")})
        self.params.setdefault(t, {k: v.detach().clone()
                                   for k, v in module.state_dict().items()})


def _hf_reference(tf, cap, t):
    model = _bert(tf)
    model.load_state_dict(cap.params[t])
    model.eval()
    inputs = {k: torch.cat([m[k] for m in cap.inputs[t]]) for k in cap.inputs[t][0]}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = []
    for b in range(inputs["labels"].shape[0]):
        one = {k: v[b:b + 1] for k, v in inputs.items()}
        loss = _hf_loss(model(**one), one).sum()
        gs = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        grads.append({n: (g if g is not None else torch.zeros_like(p))
                      for (n, p), g in zip(named, gs, strict=True)})
    norms = torch.stack([sum(g.pow(2).sum() for g in gb.values()) for gb in grads])
    return _reference_noise(norms, grads)


def _hf_train(tf, tmp_path, callbacks, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
                learning_rate=0.05, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    base.update(kw)
    model = _bert(tf)
    trainer = tf.Trainer(model=model, args=tf.TrainingArguments(**base),
                         train_dataset=_Tokens(), callbacks=callbacks)
    trainer.train()
    return trainer, model


def test_hf_noise_scale_matches_reference_under_clipping(tmp_path):
    tf = _transformers()
    from sgdlab.integrations.transformers import MonitorCallback

    cb = MonitorCallback(loss_fn=_hf_loss, instruments=["noise_scale"], every=1)
    cap = _HFCapture(tf)
    trainer, _ = _hf_train(tf, tmp_path, [cap.callback, cb], max_grad_norm=1e-3)
    assert [r["step"] for r in cb.records] == [1, 2, 3, 4]
    assert trainer.state.global_step == 4 and cb.monitor.step_count == 4
    for rec in cb.records:
        ref = _hf_reference(tf, cap, rec["step"])
        assert ref["g_hat_norm_sq"] > 1e-4
        _assert_matches(rec, ref)


def test_hf_accumulation_whole_batch(tmp_path):
    tf = _transformers()
    from sgdlab.integrations.transformers import MonitorCallback

    cb = MonitorCallback(loss_fn=_hf_loss, instruments=["noise_scale"], every=1)
    cap = _HFCapture(tf)
    trainer, _ = _hf_train(tf, tmp_path, [cap.callback, cb], max_steps=3,
                           gradient_accumulation_steps=2)
    assert [r["step"] for r in cb.records] == [1, 2, 3] and trainer.state.global_step == 3
    for rec in cb.records:
        t = rec["step"]
        assert len(cap.inputs[t]) == 2 and rec["batch_size"] == 8
        _assert_matches(rec, _hf_reference(tf, cap, t))


def test_hf_every_and_bit_identical(tmp_path):
    tf = _transformers()
    from sgdlab.integrations.transformers import MonitorCallback

    finals = []
    for with_cb in (False, True):
        cbs = [MonitorCallback(loss_fn=_hf_loss, instruments=["noise_scale", "effective_lr"],
                               every=2)] if with_cb else []
        _, model = _hf_train(tf, tmp_path / str(with_cb), cbs, gradient_accumulation_steps=2)
        finals.append([p.detach().clone() for p in model.parameters()])
    assert sorted({r["step"] for r in cbs[0].records}) == [2, 4]
    assert {r["name"] for r in cbs[0].records} == {"noise_scale", "effective_lr"}
    for a, b in zip(*finals, strict=True):
        assert torch.equal(a, b)
