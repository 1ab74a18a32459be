"""What every claim experiment returns, and the context it runs in (SPEC §4).

A claim module exposes ``CLAIM`` (a :class:`Claim`: id, title, the claim in one sentence and
its SPEC section) and ``run(ctx) -> Result``. The verdict comes from the measurement and the
tolerance stated up front, never from tuning until it agrees.

Tolerance policy (every claim): a check's prediction and tolerance are fixed in the claim
module before its measurement is run; a tolerance or design changed after a result was seen
is disclosed in the check's text or the claim's notes, where the result is shown.

Every :class:`Check` has a ``basis``: ``"notes"`` — a statement the seed notes make — or
``"derived"`` — a prediction sgdlab or the SPEC adds (a corrected form, a regime, a
mechanism, an exact formula, a control). A claim's headline verdict
(:attr:`Result.verdict`) is judged on its ``notes`` checks only; the ``derived`` checks have
their own verdict (:attr:`Result.derived_verdict`): a failed derived check is a finding about
the theory (ours or the SPEC's), not about the notes. A check's ``finding`` is a short line on
what the notes get wrong or leave out, shown in the report's summary.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sgdlab.metrics_log import atomic_write_json, restore_nonfinite, strict_json, to_jsonable
from sgdlab.threads import torch_threads

__all__ = ["BASES", "VERDICTS", "Check", "Claim", "Context", "Result", "single_threaded",
           "torch_threads", "verdict", "worst_verdict"]

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE", "ERROR")
#: What a check tests: a statement of the seed notes, or a prediction sgdlab/the SPEC adds.
BASES = ("notes", "derived")


@dataclass(frozen=True)
class Claim:
    """A claim of the notes: ``id`` (e.g. "7-adam-bias-correction"), ``title``, ``statement``
    (one sentence), ``spec`` (section, e.g. "§4.7")."""

    id: str
    title: str
    statement: str
    spec: str


@dataclass
class Check:
    """One measured comparison: ``prediction`` vs ``measured`` (± ``uncertainty``) within
    ``tolerance`` (described in words), with its own verdict; ``basis`` ``"notes"`` or
    ``"derived"`` (see the module docstring); ``finding``: a line for the report's "what the
    notes get wrong / leave out" column, or empty."""

    name: str
    prediction: str
    measured: str
    tolerance: str
    verdict: str
    numbers: dict[str, Any] = field(default_factory=dict)
    basis: str = "notes"
    finding: str = ""

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise ValueError(f"Check {self.name!r}: basis must be one of {BASES}, got "
                             f"{self.basis!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"Check {self.name!r}: verdict must be one of {VERDICTS}, got "
                             f"{self.verdict!r}")


@dataclass
class Result:
    """A claim's outcome: the checks, the headline verdict (on the ``notes`` checks: FAIL if
    any fails, else INCONCLUSIVE if any is, else PASS) and the derived verdict (the same rule
    on the ``derived`` checks), figures (paths relative to the output dir), notes and every
    number behind the verdicts."""

    claim: Claim
    checks: list[Check] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        """The headline: ERROR, else the worst verdict of the ``notes`` checks
        (INCONCLUSIVE when there are none)."""
        if self.error is not None:
            return "ERROR"
        return worst_verdict(c.verdict for c in self.checks if c.basis == "notes")

    @property
    def derived_verdict(self) -> str | None:
        """ERROR, else the worst verdict of the ``derived`` checks; None when there are none."""
        if self.error is not None:
            return "ERROR"
        derived = [c.verdict for c in self.checks if c.basis == "derived"]
        return worst_verdict(derived) if derived else None

    @property
    def findings(self) -> list[str]:
        """The checks' findings (what the notes get wrong or leave out), in check order."""
        return [c.finding for c in self.checks if c.finding]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for results.json, strict JSON: an undefined number (NaN, inf) is
        ``null``, and the result's ``"nonfinite"`` entry names it (e.g.
        ``{"checks.4.numbers.k": "nan"}``; :func:`sgdlab.metrics_log.strict_json`)."""
        d = {"claim": asdict(self.claim), "verdict": self.verdict,
             "derived_verdict": self.derived_verdict, "findings": self.findings,
             "checks": [asdict(c) for c in self.checks], "figures": self.figures,
             "notes": self.notes, "error": self.error, "seconds": self.seconds}
        return strict_json(d)


def worst_verdict(verdicts: Iterable[str]) -> str:
    """FAIL if any is FAIL, else INCONCLUSIVE if any is (or there are none), else PASS."""
    v = set(verdicts)
    for w in ("FAIL", "INCONCLUSIVE"):
        if w in v:
            return w
    return "PASS" if v else "INCONCLUSIVE"


def verdict(ok: bool, inconclusive: bool = False) -> str:
    """PASS/FAIL, or INCONCLUSIVE when the measurement cannot decide."""
    if inconclusive:
        return "INCONCLUSIVE"
    return "PASS" if ok else "FAIL"


@dataclass
class Context:
    """Where and how hard a claim runs: ``out`` (the report directory), ``mode`` ("smoke",
    "quick" or "full"), ``seeds``; :meth:`cached` memoises expensive runs in
    ``out/cache`` so an interrupted ``reproduce`` resumes instead of starting over."""

    out: Path
    mode: str = "quick"
    seeds: int = 2

    @property
    def figures(self) -> Path:
        """The figure directory (created)."""
        path = self.out / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure(self, claim: Claim, what: str) -> tuple[Path, str]:
        """Where a claim's figure goes, named one way for every claim:
        (``out/figures/<claim-id>_<what>.png``, its path relative to ``out`` for
        :attr:`Result.figures`)."""
        name = f"{claim.id}_{what}.png"
        return self.figures / name, f"figures/{name}"

    def budget(self, smoke: Any, quick: Any, full: Any) -> Any:
        """Pick a size by mode."""
        return {"smoke": smoke, "quick": quick, "full": full}[self.mode]

    def cached(self, key: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``fn()`` (a JSON-able dict), stored under a hash of ``key``; later calls with the
        same key read the stored result."""
        text = json.dumps(to_jsonable(key), sort_keys=True)
        name = hashlib.sha256(text.encode()).hexdigest()[:20]
        path = self.out / "cache" / f"{name}.json"
        if path.is_file():
            try:
                return restore_nonfinite(json.loads(path.read_text())["value"])
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a damaged entry is recomputed
        stored = strict_json(fn())  # NaN/inf: null + "nonfinite", restored as floats
        atomic_write_json(path, {"key": json.loads(text), "value": stored})
        return restore_nonfinite(json.loads(json.dumps(stored)))


def single_threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn`` with one torch thread (the claims' models are small; see
    :mod:`sgdlab.threads`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_threads(1):
            return fn(*args, **kwargs)

    return wrapper
