"""`sgdlab reproduce`: report structure, verdicts, crash isolation, caching, --strict."""

from __future__ import annotations

import json

import pytest

from _checks import non_finite
from sgdlab import experiments
from sgdlab.cli import main
from sgdlab.config import ConfigError
from sgdlab.experiments.base import Check, Claim, Context, Result
from sgdlab.reproduce import reproduce


def test_smoke_run_of_every_claim(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "--smoke", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| claim | SPEC | notes | derived | what the notes get wrong / leave out |" in text
    results = json.loads((out / "results.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"results.json holds {c}"))
    assert [r["claim"]["id"] for r in results["results"]] == experiments.available()
    for r in results["results"]:
        assert r["error"] is None, r["error"]
        assert r["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert r["derived_verdict"] in ("PASS", "FAIL", "INCONCLUSIVE", None)
        assert {c["basis"] for c in r["checks"]} <= {"notes", "derived"}
        assert any(c["basis"] == "notes" for c in r["checks"]), r["claim"]["id"]
        bad = non_finite(r["checks"])      # strict JSON: no NaN, no "nan" strings
        assert r["checks"] and not bad, (r["claim"]["id"], bad)
        for where in r.get("nonfinite", {}):   # an undefined number is null, and named
            node = r
            for part in where.split("."):
                node = node[int(part)] if isinstance(node, list) else node[part]
            assert node is None, (r["claim"]["id"], where)
        for fig in r["figures"]:
            assert (out / fig).is_file()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<h2" in html
    assert "## 5-intrinsic-lr" in (out / "report.md").read_text()


def test_exact_claims_at_their_tolerances(tmp_path):
    """Claim 5's equivalence (1e-10 in float64) and claim 7's update ratio (1e-6) are exact:
    they must PASS even at smoke budgets."""
    results = reproduce(tmp_path, mode="smoke", progress=False,
                        only=["5-intrinsic-lr", "7-adam-bias-correction"])
    by_id = {r.claim.id: r for r in results}
    assert by_id["5-intrinsic-lr"].checks[0].verdict == "PASS"
    assert by_id["7-adam-bias-correction"].checks[0].verdict == "PASS"


def test_a_crashing_claim_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    class Boom:
        CLAIM = Claim("0-boom", "boom", "always crashes", "§0")

        @staticmethod
        def run(ctx):
            raise RuntimeError("kaboom")

    class Fails:
        CLAIM = Claim("1-fails", "fails", "always fails", "§0")

        @staticmethod
        def run(ctx):
            return Result(Fails.CLAIM, [Check("c", "1", "2", "0", "FAIL")])

    monkeypatch.setitem(experiments.CLAIMS, "0-boom", Boom)
    monkeypatch.setitem(experiments.CLAIMS, "1-fails", Fails)
    out = tmp_path / "rep"
    # --jobs 1: the monkeypatched claims exist in this process only
    assert main(["reproduce", "--smoke", "--only", "0-boom,1-fails", "--out", str(out),
                 "--jobs", "1"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert results[0]["verdict"] == "ERROR" and "kaboom" in results[0]["error"]
    assert results[1]["verdict"] == "FAIL"
    assert "kaboom" in (out / "report.md").read_text()
    assert main(["reproduce", "--smoke", "--only", "1-fails", "--out", str(out),
                 "--strict", "--jobs", "1"]) == 1


def test_claims_in_parallel_workers_give_the_same_results(tmp_path, capsys):
    """--jobs 2 (spawned workers) against one process: the same checks, numbers and verdicts;
    claim 14 reads claim 6's cache, so it starts only after claim 6 has finished."""
    only = "14,7,6"
    assert main(["reproduce", "--smoke", "--only", only, "--out", str(tmp_path / "one"),
                 "--jobs", "1"]) == 0
    capsys.readouterr()
    assert main(["reproduce", "--smoke", "--only", only, "--out", str(tmp_path / "two"),
                 "--jobs", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert (err.index("[14-best-lr-momentum] running …")
            > next(i for i, e in enumerate(err) if e.startswith("[6-momentum] notes")))
    one, two = ([{k: r[k] for k in ("claim", "checks", "verdict", "derived_verdict", "figures")}
                 for r in json.loads((tmp_path / d / "results.json").read_text())["results"]]
                for d in ("one", "two"))
    assert [r["claim"]["id"] for r in two] == ["14-best-lr-momentum", "7-adam-bias-correction",
                                               "6-momentum"]
    assert one == two
    assert json.loads((tmp_path / "two" / "results.json").read_text())["meta"]["jobs"] == 2


def test_unknown_claim_is_one_line(tmp_path, capsys):
    assert main(["reproduce", "--only", "99-nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown claim '99-nope'" in err
    with pytest.raises(ConfigError, match="mode must be one of"):
        reproduce(tmp_path, mode="slow")
    assert main(["reproduce", "--jobs", "0", "--out", str(tmp_path / "j")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "jobs must be an integer >= 1, got 0" in err
    assert not (tmp_path / "j").exists()


def test_cache_resumes_instead_of_recomputing(tmp_path):
    ctx = Context(tmp_path)
    calls = []

    def expensive():
        calls.append(1)
        return {"loss": 0.25, "curve": [1.0, 0.5]}

    assert ctx.cached({"eta": 0.1, "seed": 0}, expensive) == {"loss": 0.25, "curve": [1.0, 0.5]}
    assert ctx.cached({"seed": 0, "eta": 0.1}, expensive) == {"loss": 0.25, "curve": [1.0, 0.5]}
    assert len(calls) == 1
    ctx.cached({"eta": 0.2, "seed": 0}, expensive)
    assert len(calls) == 2


def test_heat_capacity_closed_form_at_its_real_tolerance(tmp_path):
    """Claim 2's exact part: on the diagonal quadratic the measured stationary excess loss
    matches Σ_i ησ_i²/(B(4 − 2ηh_i)) within 2 % (the claim's tolerance) at the quick budget;
    seed 0, the probe's own stationarity tests must pass. η = 0.2 and 0.5 (≈ 3 s)."""
    from sgdlab.experiments import heat_capacity as hc

    budget = {"chains": 32, "rel_se": 0.008, "max_steps": 60_000}
    for eta in (0.2, 0.5):
        d = hc._diag_run(eta, budget, seed=0)
        assert d["converged"], d["reason"]
        assert abs(d["ratio"] - 1) < 0.02, d


def test_only_accepts_claim_numbers(tmp_path):
    results = reproduce(tmp_path, mode="smoke", progress=False, only=["7"])
    assert [r.claim.id for r in results] == ["7-adam-bias-correction"]


def _result(*checks):
    return Result(Claim("0-x", "x", "a statement", "§0"), list(checks))


def _check(verdict, basis="notes", finding=""):
    return Check(f"{basis} {verdict}", "p", "m", "t", verdict, basis=basis, finding=finding)


def test_headline_is_judged_on_the_notes_checks_only():
    """A failed derived check is a finding about the theory: it sets the derived verdict and
    leaves the headline alone; a failed notes check fails the headline."""
    r = _result(_check("PASS"), _check("FAIL", "derived", "the SPEC's prediction fails"))
    assert (r.verdict, r.derived_verdict) == ("PASS", "FAIL")
    assert r.findings == ["the SPEC's prediction fails"]
    r = _result(_check("FAIL"), _check("PASS", "derived"))
    assert (r.verdict, r.derived_verdict) == ("FAIL", "PASS")
    r = _result(_check("PASS"), _check("INCONCLUSIVE"))
    assert (r.verdict, r.derived_verdict) == ("INCONCLUSIVE", None)
    assert _result(_check("PASS", "derived")).verdict == "INCONCLUSIVE"   # nothing about notes
    r = _result(_check("PASS"))
    r.error = "Traceback"
    assert (r.verdict, r.derived_verdict) == ("ERROR", "ERROR")
    with pytest.raises(ValueError, match="basis must be one of"):
        Check("c", "p", "m", "t", "PASS", basis="spec")
    with pytest.raises(ValueError, match="verdict must be one of"):
        Check("c", "p", "m", "t", "OK")


def test_report_shows_both_verdicts_the_basis_and_the_findings(tmp_path):
    from sgdlab import report

    r = _result(_check("PASS"), _check("FAIL", "derived", "β gap set by η′h, not 1 − β"))
    meta = {"mode": "smoke", "seeds": 1, "date": "2026-12-03",
            "versions": {"sgdlab": "0", "torch": "0"}}
    table = report.verdict_table([r])
    assert "| 0-x | §0 | **PASS** | FAIL | β gap set by η′h, not 1 − β |" in table
    md = report.to_markdown([r], meta)
    assert "| notes PASS | notes | p | m | t | PASS |" in md
    assert "| derived FAIL | derived | p | m | t | FAIL |" in md
    report.write(tmp_path, [r], meta)
    data = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert (data["verdict"], data["derived_verdict"]) == ("PASS", "FAIL")
    assert data["findings"] == ["β gap set by η′h, not 1 − β"]
    assert "β gap set by η′h, not 1 − β" in (tmp_path / "report.html").read_text()


def test_claims_run_after_those_they_name_and_a_cycle_stops_before_anything_runs(
        tmp_path, monkeypatch):
    """AFTER moves a claim behind the claims it reads (a stable topological order of the
    notes' order); two claims naming each other are refused before anything is written."""
    from sgdlab.reproduce import _in_order

    first, second = experiments.available()[:2]
    monkeypatch.setattr(experiments.CLAIMS[first], "AFTER", (second,), raising=False)
    assert _in_order([first, second, "3-batch-size"]) == [second, first, "3-batch-size"]
    assert _in_order([first]) == [first]  # an unselected claim is not waited for
    monkeypatch.setattr(experiments.CLAIMS[second], "AFTER", (first,), raising=False)
    with pytest.raises(RuntimeError, match="cycle"):
        reproduce(tmp_path / "r", "smoke", only=[first, second], progress=False, jobs=2)
    assert not (tmp_path / "r" / "results.json").exists()
