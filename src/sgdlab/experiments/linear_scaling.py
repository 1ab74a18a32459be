"""Claim 4: the linear scaling rule in training (SPEC §4.4, Goyal et al. 2017).

Claim: with η(B) = η_ref·B/B_ref (SPEC §2.5) and a gradual (linear) warmup, the final accuracy
is nearly constant over the batch size B; without warmup the largest batches degrade.

Why it should hold: k steps of SGD at batch B with η move Φ by −η Σ_j ĝ_j; one step at batch kB
with kη moves it by −kη·(mean of the same kB gradients) — the same displacement as long as the
gradient hardly changes over the k small steps, and the same noise temperature η/B (SPEC
§4.2–4.3). It fails where the gradient changes fast within k small steps: early in training
(hence warmup) and when kη approaches the curvature limit (heavy ball on a quadratic is stable
only for η h_max < 2(1 + β)), where SGD stops tracking gradient flow or diverges.

Workload: the reference recipe of ``make run`` (configs/mnist1d_cnn.yaml): MNIST-1D (4000 train
/ 1000 test), the 1-D ``cnn``, heavy-ball momentum β = 0.9 with coupled weight decay 5e-4
(SPEC §2.2), B_ref = 128, η_ref = 0.1, cosine decay, epoch shuffling, trained by
:class:`sgdlab.train.Trainer`. Every run of a budget sees the same number of examples,
E·N (E epochs; steps T = round(E·N/B)), so large B takes fewer steps — the rule's setting.
The recipe's 150 epochs do not fit the budgets: E = 20 (quick) and 40 (full) — fewer steps make
the rule harder to satisfy at large B, so the verdict is for that length, and the largest B in
band is reported.

Schedules (multiplier on η(B), t = optimizer step, W = round(E_w·N/B) ≥ 1 with E_w = E·5/90,
Goyal's 5 of 90 epochs):

    with warmup:     f(t) = t/W for t < W,   f(t) = ½(1 + cos(π (t − W)/(T − W))) for t ≥ W
    without warmup:  f(t) = 1   for t < W,   the same cosine for t ≥ W

so the two arms differ only in the first W steps (a ramp from 0 against the full η, as in Goyal,
whose baseline is at constant η in those epochs); built as ``schedules.warmup(cosine(T − W), W,
start=0 or 1)`` through the config (schedule "warmup"). The reference recipe's own 100 warmup
steps are replaced by this rule.

Measurements (each run: final test accuracy of the last iterate, seeds 0..n−1 setting both the
initialisation and the batch order; a run that diverges — non-finite loss, recorded by the
Trainer — scores chance, 1/10, and is counted; so is a finite run that ends at the class
prior, final train loss ≥ 0.95·ln 10, "at chance"):

(a) with warmup, at every B of the ladder, Δ(B) = acc(B) − acc(B_ref) (means over seeds).
    Tolerance fixed before measuring: |Δ| ≤ 2 percentage points ("nearly constant"), judged
    with se(Δ) = √(s_B²/n_B + s_ref²/n_ref), each s the seed sd of that configuration floored at
    the test-set binomial sd √(p̄(1 − p̄)/n_test) (so that two seeds that happen to agree do not
    make se ≈ 0). PASS when |Δ| + 2 se ≤ 2 pp, FAIL when |Δ| − 2 se > 2 pp, INCONCLUSIVE
    otherwise (and with one seed, when no se exists). The check is the worst verdict over the
    ladder; the numbers give the per-B verdicts and the range of B around B_ref in band.
    (A first version floored s at the sd pooled over all B; the chaotic large-B runs, sd up to
    26 pp, then set the se of every comparison, so it was replaced by the per-pair form.)
(b) without warmup, at the largest B: gap = acc_warmup − acc_no_warmup, se as in (a). PASS
    when gap > 2 se (significant degradation), FAIL when gap + 2 se < 2 pp (a degradation as
    large as the band of (a) is excluded), INCONCLUSIVE otherwise. The gap at every B is in the
    numbers. With 2 seeds (quick) the sds have one degree of freedom each and large-B outcomes
    are bimodal (stuck near chance or not), so the full budget is the one to trust.

Budgets (B ladder; epochs; seeds): smoke {128, 512}, 2 epochs, ctx.seeds; quick
{32, 128, 512, 1024}, 20 epochs, ctx.seeds; full {32, 64, …, 1024}, 40 epochs, max(3, ctx.seeds).
Each run is cached (``ctx.cached``, keyed on its full TrainConfig) so an interrupted reproduce
resumes. One torch thread (a 5k-parameter CNN is faster single-threaded).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from sgdlab.experiments.base import Check, Claim, Context, Result, single_threaded, worst_verdict

CLAIM = Claim("4-linear-scaling", "Linear scaling rule in training",
              "Final accuracy is nearly constant over B when η = η_ref·B/B_ref with gradual "
              "warmup; without warmup the largest batches degrade.", "§4.4")

# the reference recipe: configs/mnist1d_cnn.yaml (what `make run` trains)
DATASET, MODEL, OPTIMIZER = "mnist1d", "cnn", "momentum"
B_REF, LR_REF, BETA, WEIGHT_DECAY = 128, 0.1, 0.9, 5e-4
SAMPLING = "shuffle"
WARMUP_FRACTION = 5 / 90       # Goyal et al. 2017: 5 warmup epochs of 90
BAND = 0.02                    # "nearly constant": within 2 percentage points of acc(B_ref)
CHANCE = 0.1                   # the score of a diverged run (10 classes)
CACHE_VERSION = 1


def scaled_lr(batch: int) -> float:
    """η(B) = η_ref·B/B_ref with the recipe's η_ref = 0.1, B_ref = 128 (SPEC §2.5)."""
    from sgdlab.schedules import linear_scaling

    return linear_scaling(LR_REF, batch, B_REF)


def run_length(batch: int, epochs: float, n_train: int) -> tuple[int, int]:
    """(T, W): T = round(E·N/B) steps (every B sees E·N examples) and the warmup
    W = max(1, round(E·(5/90)·N/B)) steps (Goyal's fraction of the run; SPEC §2.5, §4.4)."""
    steps = max(2, round(epochs * n_train / batch))
    warm = min(steps - 1, max(1, round(WARMUP_FRACTION * epochs * n_train / batch)))
    return steps, warm


def lr_multiplier(t: int, steps: int, warm: int, warmup: bool) -> float:
    """f(t) of the module docstring: linear ramp t/W (or 1 without warmup) for t < W, then
    ½(1 + cos(π(t − W)/(T − W))) — the multiplier on η(B) at optimizer step t (SPEC §2.5)."""
    if t < warm:
        return t / warm if warmup else 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(t - warm, steps - warm) / (steps - warm)))


def train_config(batch: int, epochs: float, warmup: bool, seed: int, n_train: int,
                 dataset_options: dict[str, Any] | None = None):
    """The :class:`~sgdlab.config.TrainConfig` of one run: the reference recipe at batch B with
    η(B) = η_ref·B/B_ref, T and W from :func:`run_length`, the schedule of
    :func:`lr_multiplier` (SPEC §2.5, §4.4); evaluation and logging only at the end."""
    from sgdlab.config import from_dict

    steps, warm = run_length(batch, epochs, n_train)
    return from_dict({
        "dataset": DATASET, "model": MODEL, "optimizer": OPTIMIZER, "lr": scaled_lr(batch),
        "optimizer_options": {"beta": BETA, "weight_decay": WEIGHT_DECAY},
        "schedule": "warmup",
        "schedule_options": {"schedule": {"name": "cosine", "total": steps - warm},
                             "steps": warm, "start": 0.0 if warmup else 1.0},
        "warmup_steps": 0, "batch_size": batch, "steps": steps, "sampling": SAMPLING,
        "seed": seed, "device": "cpu", "eval_every": steps, "log_every": steps,
        "dataset_options": dict(dataset_options or {}),
    })


def train_one(cfg) -> dict[str, Any]:
    """Train one configuration with the Trainer (in memory) and return its final metrics; a
    diverged run (non-finite loss) scores chance accuracy and is flagged."""
    from sgdlab.train import Trainer

    t0 = time.perf_counter()
    summary = Trainer(cfg, progress=False).fit()
    final = summary["final"]
    diverged = summary["status"] == "diverged"
    acc = final.get("test_acc")
    ok = (not diverged) and acc is not None and math.isfinite(acc)
    return {"test_acc": float(acc) if ok else CHANCE,
            "test_loss": _finite(final.get("test_loss")) if ok else None,
            "train_loss": _finite(final.get("train_loss")) if ok else None,
            "train_acc": _finite(final.get("train_acc")) if ok else None,
            "status": summary["status"], "diverged": diverged or not ok,
            "message": summary["message"], "steps_done": int(summary["steps"]),
            "seconds": time.perf_counter() - t0}


def at_chance(r: dict[str, Any]) -> bool:
    """A finite run that ended at the class prior: final train loss ≥ 0.95·ln 10."""
    loss = r.get("train_loss")
    return (not r["diverged"]) and loss is not None and loss >= 0.95 * math.log(10)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def diff_se(a: list[float], b: list[float], n_test: int) -> float | None:
    """se of mean(a) − mean(b) for accuracies of independent seeds: √(s_a²/n_a + s_b²/n_b),
    each s the sample sd (ddof 1) floored at the binomial sd √(p̄(1 − p̄)/n_test) of an
    accuracy measured on ``n_test`` examples; None when a group has one value."""
    parts = []
    for g in (a, b):
        if len(g) < 2:
            return None
        p = float(np.mean(g))
        s = max(float(np.std(g, ddof=1)), math.sqrt(p * (1.0 - p) / n_test))
        parts.append(s * s / len(g))
    return math.sqrt(sum(parts))


def band_verdict(diff: float, se: float | None, band: float = BAND) -> str:
    """|Δ| within ``band``: PASS when |Δ| + 2 se ≤ band, FAIL when |Δ| − 2 se > band,
    INCONCLUSIVE otherwise or without an se."""
    if se is None:
        return "INCONCLUSIVE"
    if abs(diff) + 2 * se <= band:
        return "PASS"
    if abs(diff) - 2 * se > band:
        return "FAIL"
    return "INCONCLUSIVE"


def gap_verdict(gap: float, se: float | None, band: float = BAND) -> str:
    """Degradation without warmup: PASS when gap > 2 se, FAIL when gap + 2 se < band,
    INCONCLUSIVE otherwise or without an se."""
    if se is None:
        return "INCONCLUSIVE"
    if gap > 2 * se:
        return "PASS"
    if gap + 2 * se < band:
        return "FAIL"
    return "INCONCLUSIVE"



def _sd(a: list[float]) -> float | None:
    return float(np.std(a, ddof=1)) if len(a) >= 2 else None


def _mean_or_none(a: list[float | None]) -> float | None:
    v = [x for x in a if x is not None]
    return float(np.mean(v)) if v else None


@single_threaded
def run(ctx: Context) -> Result:
    """Measure the claim (one torch thread); see the module docstring."""
    from sgdlab import data

    res = Result(CLAIM)
    batches = ctx.budget([128, 512], [32, 128, 512, 1024], [32, 64, 128, 256, 512, 1024])
    epochs = ctx.budget(2, 20, 40)
    n_seeds = ctx.budget(ctx.seeds, ctx.seeds, max(3, ctx.seeds))
    seeds = list(range(n_seeds))
    ds = data.load(DATASET, seed=0)
    n_train, n_test = ds.n_train, ds.n_test
    arms = (True, False)

    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    for b in batches:
        for warm in arms:
            for s in seeds:
                cfg = train_config(b, epochs, warm, s, n_train)
                key = {"claim": CLAIM.id, "v": CACHE_VERSION, "config": cfg.to_dict()}
                runs.setdefault((b, warm), []).append(
                    ctx.cached(key, lambda cfg=cfg: train_one(cfg)))
    seconds = time.perf_counter() - t0

    acc = {k: [r["test_acc"] for r in v] for k, v in runs.items()}
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    sd = {k: _sd(v) for k, v in acc.items()}
    div = {k: int(sum(r["diverged"] for r in v)) for k, v in runs.items()}
    stuck = {k: int(sum(at_chance(r) for r in v)) for k, v in runs.items()}
    lengths = [run_length(b, epochs, n_train) for b in batches]

    # (a) with warmup: every B within the band of B_ref
    ref = acc[(B_REF, True)]
    diffs, ses, per_b = [], [], []
    for b in batches:
        d = mean[(b, True)] - mean[(B_REF, True)]
        se = None if b == B_REF else diff_se(acc[(b, True)], ref, n_test)
        diffs.append(d)
        ses.append(se)
        per_b.append("PASS" if b == B_REF else band_verdict(d, se))
    others = [v for b, v in zip(batches, per_b, strict=True) if b != B_REF]
    va = worst_verdict(others)
    i_ref = batches.index(B_REF)
    hi = B_REF
    for b, v in zip(batches[i_ref + 1:], per_b[i_ref + 1:], strict=True):
        if v != "PASS":
            break
        hi = b
    lo = B_REF
    for b, v in zip(reversed(batches[:i_ref]), reversed(per_b[:i_ref]), strict=True):
        if v != "PASS":
            break
        lo = b
    fails = [b for b, v in zip(batches, per_b, strict=True) if v == "FAIL"]
    res.checks.append(Check(
        "with warmup: accuracy flat in B",
        f"final test accuracy at η = {LR_REF}·B/{B_REF} with warmup equals that at "
        f"B_ref = {B_REF} for every B in {batches}",
        "Δ = acc(B) − acc(B_ref): " + ", ".join(
            f"B={b}: {100 * d:+.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")
            + " pp" for b, d, se in zip(batches, diffs, ses, strict=True) if b != B_REF)
        + f"; in band (PASS) from B = {lo} to {hi}"
        + (f"; out of band at B = {fails}" if fails else ""),
        f"|Δ| ≤ {100 * BAND:.0f} pp: PASS when |Δ| + 2 se ≤ {100 * BAND:.0f} pp, FAIL when "
        f"|Δ| − 2 se > {100 * BAND:.0f} pp (se from the seed sds, floored at the test-set "
        "binomial sd)",
        va,
        {"B": batches, "B_ref": B_REF, "lr_ref": LR_REF, "lr": [scaled_lr(b) for b in batches],
         "steps": [t for t, _ in lengths], "warmup_steps": [w for _, w in lengths],
         "epochs": epochs, "n_train": n_train, "n_test": n_test, "seeds": n_seeds,
         "band": BAND,
         "acc_mean": [mean[(b, True)] for b in batches],
         "acc_sd": [sd[(b, True)] for b in batches],
         "acc_runs": [acc[(b, True)] for b in batches],
         "diverged": [div[(b, True)] for b in batches],
         "at_chance": [stuck[(b, True)] for b in batches],
         "diff_vs_ref": diffs, "diff_se": ses, "per_B_verdict": per_b,
         "smallest_B_in_band": lo, "largest_B_in_band": hi}))

    # (b) without warmup: the largest B degrades
    gaps = [mean[(b, True)] - mean[(b, False)] for b in batches]
    gap_ses = [diff_se(acc[(b, True)], acc[(b, False)], n_test) for b in batches]
    bmax = batches[-1]
    g, gse = gaps[-1], gap_ses[-1]
    vb = gap_verdict(g, gse)
    res.checks.append(Check(
        "without warmup: largest B degrades",
        f"at B = {bmax} (η = {scaled_lr(bmax):.3g}) the accuracy without warmup is lower "
        "than with warmup",
        f"acc with warmup {100 * mean[(bmax, True)]:.1f}%, without "
        f"{100 * mean[(bmax, False)]:.1f}% (diverged {div[(bmax, False)]}/{n_seeds}): gap "
        f"{100 * g:+.1f}" + (f" ± {100 * gse:.1f}" if gse is not None else "") + " pp",
        f"PASS when gap > 2 se; FAIL when gap + 2 se < {100 * BAND:.0f} pp; "
        "se from the seed sds floored at the test-set binomial sd",
        vb,
        {"B": bmax, "lr": scaled_lr(bmax), "gap": g, "gap_se": gse,
         "acc_warmup_mean": mean[(bmax, True)], "acc_no_warmup_mean": mean[(bmax, False)],
         "acc_no_warmup_runs": acc[(bmax, False)], "acc_warmup_runs": acc[(bmax, True)],
         "no_warmup_diverged": div[(bmax, False)], "n_test": n_test, "band": BAND,
         "B_all": batches, "gap_all": gaps, "gap_se_all": gap_ses,
         "acc_no_warmup_mean_all": [mean[(b, False)] for b in batches],
         "acc_no_warmup_sd_all": [sd[(b, False)] for b in batches],
         "acc_no_warmup_runs_all": [acc[(b, False)] for b in batches],
         "no_warmup_diverged_all": [div[(b, False)] for b in batches],
         "no_warmup_at_chance_all": [stuck[(b, False)] for b in batches],
         "train_loss_warmup_mean": [_mean_or_none([r["train_loss"] for r in runs[(b, True)]])
                                    for b in batches],
         "train_loss_no_warmup_mean": [
             _mean_or_none([r["train_loss"] for r in runs[(b, False)]]) for b in batches],
         "seconds_total": seconds}))

    # table and notes
    def fmt(k: tuple[int, bool]) -> str:
        s = sd[k]
        d = (f", {div[k]} diverged" if div[k] else "") + (
            f", {stuck[k]} at chance" if stuck[k] else "")
        return f"{100 * mean[k]:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "") + d

    res.notes.append(
        f"MNIST-1D CNN, momentum β = {BETA}, weight decay {WEIGHT_DECAY}, η = {LR_REF}·B/{B_REF}, "
        f"cosine after a {WARMUP_FRACTION * epochs:.2f}-epoch warmup (or constant η for those "
        f"steps), {epochs} epochs of N = {n_train} for every B, {n_seeds} seed(s); accuracies "
        "in % (mean ± sd over seeds); a diverged run scores 10%; 'at chance': a finite run "
        "whose final train loss is within 5% of ln 10 (it predicts the class prior — the "
        "collapse at too large η that does not produce NaN).")
    res.notes.append("B | η | steps | warmup steps | acc with warmup | acc without warmup")
    for b, (t, w) in zip(batches, lengths, strict=True):
        res.notes.append(f"{b} | {scaled_lr(b):.4g} | {t} | {w} | {fmt((b, True))} | "
                         f"{fmt((b, False))}")
    res.notes.append(f"Training time of the {len(batches) * 2 * n_seeds} runs: {seconds:.1f} s "
                     "(0 when read from the cache).")
    res.figures.append(_figure(ctx, batches, mean, sd, acc, div, runs, epochs, n_seeds))
    return res


def _figure(ctx: Context, batches: list[int], mean: dict, sd: dict, acc: dict, div: dict,
            runs: dict, epochs: float, n_seeds: int) -> str:
    """Final test accuracy against B (log2 axis), with and without warmup (error bars: seed
    sd), the B_ref level with its ±2 pp band; final train loss against B beside it."""
    from sgdlab.plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, figsize=(11.0, 4.6))
    ax, ax2 = axes[0, 0], axes[0, 1]
    b = np.asarray(batches, dtype=float)
    ref = mean[(B_REF, True)]
    ax.axhspan(100 * (ref - BAND), 100 * (ref + BAND), color="gray", alpha=0.15,
               label=f"acc(B_ref = {B_REF}) ± {100 * BAND:.0f} pp")
    ax.axhline(100 * ref, color="gray", linestyle="--", linewidth=1)
    for warm, col, lab, off in ((True, "tab:blue", "with warmup", 0.97),
                                (False, "tab:red", "without warmup", 1.03)):
        m = np.array([100 * mean[(x, warm)] for x in batches])
        e = np.array([100 * (sd[(x, warm)] or 0.0) for x in batches])
        ax.errorbar(b * off, m, yerr=e, fmt="o-", color=col, capsize=3, markersize=4,
                    label=f"{lab} (mean ± sd, {n_seeds} seed{'s' if n_seeds > 1 else ''})")
        for x in batches:
            ax.plot([x * off] * len(acc[(x, warm)]), [100 * a for a in acc[(x, warm)]],
                    ".", color=col, alpha=0.4, markersize=3)
            if div[(x, warm)]:
                ax.plot([x * off], [100 * CHANCE], "x", color=col, markersize=8)
        tl = [[r["train_loss"] for r in runs[(x, warm)] if r["train_loss"] is not None]
              for x in batches]
        keep = [i for i, v in enumerate(tl) if v]
        ax2.plot(b[keep] * off, [float(np.mean(tl[i])) for i in keep], "o-", color=col,
                 markersize=4, label=lab)
    ax.axhline(100 * CHANCE, color="black", linestyle=":", linewidth=0.8,
               label="chance (diverged runs: ×)")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(b)
        a.set_xticklabels([str(x) for x in batches])
        a.set_xlabel("batch size B  (η = 0.1·B/128)")
        a.grid(True, alpha=0.3, which="both")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"Linear scaling rule, MNIST-1D CNN, {epochs} epochs")
    ax.legend(fontsize=7, loc="lower left")
    ax2.set_yscale("log")
    ax2.set_ylabel("final train loss (mean over seeds)")
    ax2.set_title("final train loss")
    ax2.legend(fontsize=7)
    path = ctx.figures / "claim4_linear_scaling.png"
    save_figure(fig, path)
    return f"figures/{path.name}"
