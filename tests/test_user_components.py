"""The user's own components everywhere: the Trainer on a user model, user data and a
per-example loss (tensors, map-style Datasets through a DataLoader), CLI import strings,
public registration of models and optimizers, torch's hyper-parameter names, and
train_many on embeddings and user classes. Architectures from tests/_zoo.py (sgdlab does
not ship them); references are hand-written torch loops."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

from _user_data import sequences, tokens
from sgdlab import checkpoint, data, models, optim
from sgdlab.cli import main
from sgdlab.config import ConfigError, TrainConfig, from_dict
from sgdlab.metrics_log import read_metrics
from sgdlab.sweep import grid, train_many
from sgdlab.train import Trainer
from test_train import StopAt

from _zoo import EmbeddingBagLike, TinyGRU, TinyTransformer, per_example_ce


def transformer() -> nn.Module:
    torch.manual_seed(1)
    return TinyTransformer()


def gru() -> nn.Module:
    torch.manual_seed(2)
    return TinyGRU()


def final_params(run_dir) -> dict[str, torch.Tensor]:
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def cfg(out=None, **kw) -> dict:
    base = {"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "steps": 40, "eval_every": 10,
            "log_every": 5, "seed": 4, "out": None if out is None else str(out)}
    base.update(kw)
    return base


class PairDataset(TorchDataset):
    """A plain map-style dataset (not a TensorDataset) returning (x, y) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


# --------------------------------------------------------------------------- Trainer


@pytest.mark.parametrize(("arch", "average", "stop"), [
    ("transformer", "swa", 17), ("gru", "ema", 23)])
def test_trainer_on_user_model_resumes_bit_for_bit(tmp_path, arch, average, stop):
    """A user model (int64 tokens / float sequences) on tensors with a per-example loss,
    averaged, stopped mid-run and resumed: parameters, averaged model and logged losses are
    exactly those of an uninterrupted run; config.yaml records the objects; plots exist."""
    make, (x, y) = (transformer, tokens(200)) if arch == "transformer" else (gru, sequences(200))
    tensors = (x[:160], y[:160], x[160:], y[160:])
    extra = {"average": average, "average_start": 0.25, "ema_decay": 0.9}
    full = Trainer(cfg(tmp_path / "full", **extra), model=make(), data=tensors,
                   loss_fn=per_example_ce).fit()
    first = Trainer(cfg(tmp_path / "cut", **extra), callbacks=[StopAt(stop)], model=make(),
                    data=tensors, loss_fn=per_example_ce).fit()
    assert first["status"] == "interrupted" and first["steps"] == stop
    again = Trainer(cfg(tmp_path / "cut", **extra), model=make(), data=tensors,
                    loss_fn=per_example_ce).resume()
    assert full["status"] == again["status"] == "completed"
    assert_same_params(final_params(tmp_path / "full"), final_params(tmp_path / "cut"))
    a = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["averaged"]
    b = checkpoint.load(tmp_path / "cut" / "checkpoints" / "last.pt")["averaged"]
    assert_same_params(a, b)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "train"]
              for d in (tmp_path / "full", tmp_path / "cut")]
    assert losses[0] == losses[1] and len(losses[0]) == 8
    assert full["final"] == again["final"] and "avg_test_acc" in full["final"]
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["model"].startswith("<") and saved["model"].endswith("TinyRNN>" if arch ==
                                                                       "gru" else
                                                                       "TinyTransformer>")
    assert saved["dataset"] == "<builtins.tuple>"
    assert (tmp_path / "full" / "plots" / "loss.png").is_file()


def test_trainer_matches_a_hand_written_loop_on_a_gru():
    """sgd with torch's momentum=0.9 and the sgdlab sampler's batches against
    torch.optim.SGD(momentum=0.9) over the same index batches: parameters to 1e-5, and the
    final evaluation equals the reference's mean losses and accuracies."""
    x, y = sequences(240)
    xt, yt = sequences(60, seed=5)
    config = cfg(optimizer="sgd", lr=0.05, optimizer_options={"momentum": 0.9}, steps=30,
                 sampling="shuffle", eval_every=30)
    model = gru()
    ref = copy.deepcopy(model)
    summary = Trainer(config, model=model, data=(x, y, xt, yt), loss_fn=per_example_ce).fit()
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    sampler = data.BatchSampler(240, 16, mode="shuffle", seed=4)
    for _ in range(30):
        idx = sampler.next_batch()
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    ref.eval()
    with torch.no_grad():
        for split, (xs, ys) in (("train", (x, y)), ("test", (xt, yt))):
            out = ref(xs)
            assert summary["final"][f"{split}_loss"] == pytest.approx(
                F.cross_entropy(out, ys).item(), rel=1e-5)
            assert summary["final"][f"{split}_acc"] == pytest.approx(
                (out.argmax(1) == ys).double().mean().item(), abs=1 / 240)


@pytest.mark.parametrize("workers", [0, 2])
def test_map_style_datasets_through_a_dataloader_resume_exactly(tmp_path, workers):
    """Map-style Datasets read by a DataLoader (workers prefetching ahead of the loop) over
    the resumable sampler: the same run as on the tensors, and a stop at step 13 (in the
    middle of the prefetched batches) resumes to the same parameters."""
    x, y = tokens(200)
    tensors = (x[:160], y[:160], x[160:], y[160:])
    mapped = data.MapData(PairDataset(x[:160], y[:160]), PairDataset(x[160:], y[160:]),
                          num_workers=workers)
    kw = {"sampling": "replacement", "steps": 30}
    ref = Trainer(cfg(tmp_path / "ref", **kw), model=transformer(), data=tensors,
                  loss_fn=per_example_ce).fit()
    Trainer(cfg(tmp_path / "cut", **kw), callbacks=[StopAt(13)], model=transformer(),
            data=mapped, loss_fn=per_example_ce).fit()
    got = Trainer(cfg(tmp_path / "cut", **kw), model=transformer(), data=mapped,
                  loss_fn=per_example_ce).resume()
    assert_same_params(final_params(tmp_path / "ref"), final_params(tmp_path / "cut"))
    assert got["final"] == ref["final"]


def test_trainer_accepts_dataset_pairs_and_regression():
    """(train, test) TensorDatasets with float targets: regression inferred, a user
    per-example squared loss; the evaluation equals the mean over the test set."""
    torch.manual_seed(0)
    x = torch.randn(100, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])
    model = nn.Linear(4, 1)

    def sq(out, t):
        return (out - t).pow(2).sum(-1)

    s = Trainer(cfg(optimizer="sgd", lr=0.05, steps=50), model=model,
                data=(TensorDataset(x[:80], y[:80]), TensorDataset(x[80:], y[80:])),
                loss_fn=sq).fit()
    with torch.no_grad():
        assert s["final"]["test_loss"] == pytest.approx(sq(model(x[80:]), y[80:]).mean().item(),
                                                        rel=1e-6)
    assert "test_acc" not in s["final"] and s["final"]["train_loss"] < 0.5


def test_bad_user_objects_are_one_line_errors_before_anything_is_written(tmp_path):
    x, y = tokens(40)
    tensors = (x[:30], y[:30], x[30:], y[30:])
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^loss_fn: must return per-example losses of "
                                          r"shape \(2,\)"):
        Trainer(cfg(out), model=transformer(), data=tensors, loss_fn=F.cross_entropy)
    with pytest.raises(ConfigError, match="^model: must be a torch.nn.Module"):
        Trainer(cfg(out), model="transformer", data=tensors, loss_fn=per_example_ce)
    with pytest.raises(ConfigError, match="^dataset: expected an sgdlab Dataset"):
        Trainer(cfg(out), model=transformer(), data=[1, 2, 3], loss_fn=per_example_ce)
    with pytest.raises(ConfigError, match="^dataset: x_test has 10 examples but y_test has 9"):
        Trainer(cfg(out), model=transformer(), data=(*tensors[:3], y[31:]),
                loss_fn=per_example_ce)
    with pytest.raises(ConfigError, match="^model: the forward .* fails"):
        Trainer(cfg(out), model=nn.Linear(3, 5), data=tensors, loss_fn=per_example_ce)
    assert not out.exists()


def test_resume_of_an_object_run_from_the_config_alone_says_what_to_do(tmp_path):
    x, y = tokens(40)
    Trainer(cfg(tmp_path / "r", steps=3), model=transformer(), data=(x, y, x, y),
            loss_fn=per_example_ce).fit()
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    with pytest.raises(ConfigError, match=r"^dataset: <builtins.tuple> was a Python object"):
        Trainer(from_dict(saved)).resume()


# --------------------------------------------------------------------------- CLI


USER_FILE = '''
import torch
from torch import nn

def data(seed=0, n=240):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 20, (n, 5), generator=g)
    y = x[:, 0] % 5
    return {"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:],
            "task": "classification"}

class Net(nn.Module):
    """Embedding + GRU: neither is an sgdlab model."""
    def __init__(self, spec, width=8):
        super().__init__()
        self.emb = nn.Embedding(20, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, spec.num_outputs)
    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0][:, -1])

def no_spec():
    return nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(20, 5))

def raises(spec):
    raise RuntimeError("broken model\\nwith a second line")

def wrong_type(spec):
    return 42

def wrong_data():
    return [1, 2, 3]
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "user_models.py"
    path.write_text(USER_FILE)
    return path


def cli_train(user_file, out, *extra):
    return ["train", "--dataset", f"{user_file}:data", "--model", f"{user_file}:Net",
            "--optimizer", "adam", "--lr", "0.01", "--batch-size", "20", "--steps", "30",
            "--seed", "1", "--quiet", "--out", str(out), *extra]


def test_cli_import_strings_train_record_and_resume(tmp_path, user_file, monkeypatch):
    """--model/--dataset import strings: config.yaml records them (absolute path), a run
    stopped at step 11 continues with `--resume` to the uninterrupted run's parameters,
    model options reach the callable, and `sgdlab probe` rebuilds the run."""
    monkeypatch.chdir(tmp_path)
    assert main(cli_train(user_file.name, tmp_path / "full", "--model-opt", "width=6")) == 0
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["model"] == f"{user_file}:Net" and saved["dataset"] == f"{user_file}:data"
    assert saved["model_options"] == {"width": 6}
    assert final_params(tmp_path / "full")["emb.weight"].shape == (20, 6)

    cut = from_dict({**saved, "out": str(tmp_path / "cut")})
    assert Trainer(cut, callbacks=[StopAt(11)]).fit()["status"] == "interrupted"
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert_same_params(final_params(tmp_path / "full"), final_params(tmp_path / "cut"))
    assert main(["probe", str(tmp_path / "full"), "--probe", "noise_scale,effective_lr"]) == 0


def test_cli_model_without_arguments_and_check_lr_find(tmp_path, user_file, capsys):
    assert main(["check", "--dataset", f"{user_file}:data", "--model", f"{user_file}:no_spec",
                 "--optimizer", "adam", "--lr", "0.05", "--overfit-examples", "10",
                 "--overfit-steps", "150"]) == 0
    assert capsys.readouterr().out.count("PASS") == 2
    assert main(["lr-find", "--dataset", f"{user_file}:data", "--model", f"{user_file}:Net",
                 "--optimizer", "sgd", "--batch-size", "20", "--num-steps", "20",
                 "--out", str(tmp_path / "lrf")]) == 0
    assert json.loads((tmp_path / "lrf" / "lr_find.json").read_text())["config"][
        "model"] == f"{user_file}:Net"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("--model", "no_such_module_xyz:make", "model: 'no_such_module_xyz:make': cannot import"),
    ("--model", "{f}:missing", "has no attribute 'missing'"),
    ("--model", "{f}:raises", "raised RuntimeError: broken model"),
    ("--model", "{f}:wrong_type", "returned int; expected a torch.nn.Module"),
    ("--dataset", "{f}:wrong_data", "dataset: '{f}:wrong_data' returned list"),
    ("--dataset", "{d}/nope.py:data", "dataset: '{d}/nope.py:data': file"),
])
@pytest.mark.parametrize("command", ["train", "check", "lr-find"])
def test_cli_bad_import_strings(tmp_path, user_file, capsys, command, field, value, message):
    """One line naming the field, exit 2, no run directory, no traceback."""
    fill = {"f": str(user_file), "d": str(tmp_path)}
    args = {"--dataset": f"{user_file}:data", "--model": f"{user_file}:Net",
            field: value.format(**fill)}
    out = tmp_path / "out"
    argv = [command, "--dataset", args["--dataset"], "--model", args["--model"], "--lr", "0.1"]
    argv += ["--steps", "5", "--out", str(out), "--quiet"] if command == "train" else []
    argv += ["--out", str(out)] if command == "lr-find" else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"sgdlab: error: {field[2:]}:")
    assert message.format(**fill) in err
    assert not out.exists()


def test_cli_ddp_with_import_strings(tmp_path, user_file):
    """`--nproc 2` on a user model and data: both ranks end on rank 0's parameters, equal
    to a single process to float tolerance (1e-5 relative)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, extra in (("single", []), ("ddp", ["--nproc", "2"])):
        args = cli_train(user_file, tmp_path / name, "--sampling", "replacement", *extra)
        proc = subprocess.run([sys.executable, "-m", "sgdlab.cli", *args], capture_output=True,
                              text=True, env=env, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = final_params(tmp_path / name)
    for key in runs["single"]:
        torch.testing.assert_close(runs["ddp"][key], runs["single"][key], rtol=1e-5, atol=1e-6)
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ddp_max_param_diff"] == 0.0


# --------------------------------------------------------------------------- registration


@pytest.fixture()
def clean_registries():
    before_m, before_o = dict(models._REGISTRY), dict(optim.OPTIMIZERS)
    yield
    models._REGISTRY.clear()
    models._REGISTRY.update(before_m)
    optim.OPTIMIZERS.clear()
    optim.OPTIMIZERS.update(before_o)


def test_models_register(clean_registries):
    @models.register("tiny_gru")
    def tiny_gru(spec, hidden=5):
        return TinyGRU(features=spec.input_shape[-1], hidden=hidden, classes=spec.num_outputs)

    m = models.build("tiny_gru", models.DataSpec((7, 3), 4), seed=0, hidden=6)
    assert m.head.out_features == 4 and m.rnn.hidden_size == 6
    assert "tiny_gru" in models.available()
    from_dict({"model": "tiny_gru", "steps": 1})  # the config accepts the new name
    with pytest.raises(ValueError, match="unknown option"):
        models.build("tiny_gru", models.DataSpec((7, 3), 4), width=3)
    with pytest.raises(ValueError, match="'mlp' is already registered .*known: linear"):
        models.register("mlp")
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_gru")
    models.register("tiny_gru", replace=True)(tiny_gru)
    with pytest.raises(ValueError, match="model name must be"):
        models.register("bad name")
    with pytest.raises(ValueError, match="DataSpec as its first positional"):
        models.register("no_spec")(lambda: None)


class Sign(torch.optim.Optimizer):
    """signSGD: Φ ← Φ − η sign(ĝ)."""

    def __init__(self, params, lr: float = 0.01) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-g["lr"])


def test_optim_register(clean_registries):
    assert optim.register("sign", Sign) is Sign
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = optim.create("sign", [p], lr=0.5)
    p.grad = torch.tensor([3.0, -0.1])
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([0.5, -1.5]))
    assert optim.hyperparameters("sign") == {"lr": 0.01}
    with pytest.raises(ValueError, match="unknown hyper-parameter 'beta' for optimizer 'sign'"):
        optim.create("sign", [p], beta=0.9)
    from_dict({"optimizer": "sign", "steps": 1})
    with pytest.raises(ValueError, match="'adam' is already registered"):
        optim.register("adam", Sign)
    with pytest.raises(ValueError, match="must be a torch.optim.Optimizer subclass"):
        optim.register("nope", int)


def _run(opt_factory, steps=5):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = opt_factory(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_optim_create_accepts_torch_names():
    """momentum= means heavy-ball beta=; sgd with momentum > 0 is torch.optim.SGD with
    momentum (to 1e-6), momentum=0 is plain SGD; both names at once is an error."""
    beta = _run(lambda ps: optim.create("momentum", ps, lr=0.1, beta=0.9))
    alias = _run(lambda ps: optim.create("momentum", ps, lr=0.1, momentum=0.9))
    sgd = _run(lambda ps: optim.create("sgd", ps, lr=0.1, momentum=0.9))
    ref = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
    for a, b, c, r in zip(beta, alias, sgd, ref, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-7)
    nest = _run(lambda ps: optim.create("sgd", ps, lr=0.1, momentum=0.9, nesterov=True))
    ref_n = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True))
    for a, r in zip(nest, ref_n, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-7)
    assert type(optim.create("sgd", [nn.Parameter(torch.ones(1))], lr=0.1,
                             momentum=0.0)) is optim.SGD
    with pytest.raises(ValueError, match="^give 'beta' or its torch name 'momentum'"):
        optim.create("momentum", [nn.Parameter(torch.ones(1))], lr=0.1, beta=0.9,
                     momentum=0.9)
    adam = _run(lambda ps: optim.create("adam", ps, lr=0.01, betas=(0.8, 0.99)))
    ref_a = _run(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99)))
    for a, r in zip(adam, ref_a, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-7)
    # through the config and the trainer: --opt momentum=0.9 with optimizer sgd
    t = Trainer(TrainConfig(dataset="linreg", model="linear", optimizer="sgd", lr=0.01,
                            steps=1, optimizer_options={"momentum": 0.9}), progress=False)
    assert type(t.optimizer) is optim.Momentum and t.optimizer.param_groups[0]["beta"] == 0.9


# --------------------------------------------------------------------------- sweeps


def test_train_many_on_integer_inputs_and_a_user_class():
    """An embedding model class on int64 tokens (never cast to float) with options: each
    of K = 2 models ends where torch.optim.SGD on its own copy ends (same batches), 1e-5."""
    x, y = tokens(160)
    ds = data.from_tensors(x[:128], y[:128], x[128:], y[128:])
    assert ds.x_train.dtype == torch.int64
    points = grid(lr=[0.1, 0.5], seed=[3])
    res = train_many(ds, EmbeddingBagLike, points, batch_size=16, steps=12,
                     model_options={"d": 4}, sampling="shuffle")
    for k, point in enumerate(points):
        torch.manual_seed(point["seed"])
        ref = EmbeddingBagLike(d=4)
        opt = torch.optim.SGD(ref.parameters(), lr=point["lr"])
        sampler = data.BatchSampler(128, 16, "shuffle", 0)
        for _ in range(12):
            idx = sampler.next_batch()
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
        for name, p in ref.named_parameters():
            torch.testing.assert_close(res.params[name][k], p.detach(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        train_many(ds, lambda: 3, points, batch_size=16, steps=1)
