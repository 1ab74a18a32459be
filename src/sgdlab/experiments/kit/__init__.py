"""Shared pieces of the claim experiments (SPEC §4): one place each for what every claim
needs — :mod:`~sgdlab.experiments.kit.verdicts` (the verdict rules) and :func:`run_claim`
(measure → judge → present). A claim module on the kit's shape defines ``CLAIM``,
``BUDGETS`` (smoke/quick/full as data), ``measure(ctx, budget)``, a pure ``judge(m)``,
``figures(ctx, m)``, optionally ``notes(ctx, m, budget)``, and
``run = lambda ctx: run_claim(module, ctx)`` in effect (see ``leaves_optimum.py``)."""


def run_claim(module, ctx):
    """Run a claim written on the kit's shape (one place for what every claim's ``run`` did):
    ``module.measure(ctx, module.BUDGETS[ctx.mode])`` → ``module.judge(m)`` (pure) →
    ``module.figures(ctx, m)``, and ``module.notes(ctx, m, budget)`` (optional) below the
    checks; one torch thread (the claims' models are small; see :mod:`sgdlab.threads`).
    Returns the claim's :class:`~sgdlab.experiments.base.Result`."""
    from sgdlab.experiments.base import Result, torch_threads

    budget = module.BUDGETS[ctx.mode]
    with torch_threads(1):
        m = module.measure(ctx, budget)
        res = Result(module.CLAIM, module.judge(m))
        res.figures = module.figures(ctx, m)
        if hasattr(module, "notes"):
            res.notes.extend(module.notes(ctx, m, budget))
    return res
