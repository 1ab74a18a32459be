"""report.html in a real browser: headless Chromium renders it without errors, and its
summary table lists every claim of results.json, grouped by seed note (issue 12)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from sgdlab import experiments, report
from sgdlab.experiments.base import Check, Context, Result
from sgdlab.experiments.seeds import seed_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs "
                                "Debian's chromium)")


class _Summary(HTMLParser):
    """The claim ids of the rows of the rendered #summary table, and its seed headers."""

    def __init__(self) -> None:
        super().__init__()
        self.in_summary = False
        self.claims: list[str] = []
        self.seed_rows = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.in_summary = a.get("id") == "summary"
        if self.in_summary and tag == "tr":
            if a.get("class") == "claim":
                self.claims.append(a["data-claim"])
            elif a.get("class") == "seed":
                self.seed_rows += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_summary = False


def _render(path, tmp_path) -> tuple[str, str]:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--v=0",
                           f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1200,900",
                           f"file://{path}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                          f"file://{path}"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout, proc.stderr


def test_report_renders_and_lists_every_claim(tmp_path):
    """Every registered claim (one real smoke run, claim 17, and constructed results for
    the others, including an ERROR): the rendered summary lists exactly results.json's
    claims, one header per seed note, with no console error."""
    real = experiments.CLAIMS["17-small-steps"].run(Context(tmp_path, mode="smoke"))
    results = []
    for cid in experiments.available():
        if cid == real.claim.id:
            results.append(real)
            continue
        claim = experiments.CLAIMS[cid].CLAIM
        r = Result(claim, [Check("c", "p", "1.0 ± 0.1; more", "±2 se", "PASS"),
                           Check("d", "p", "m", "t", "FAIL", basis="derived",
                                 finding="a finding <with> markup & co")])
        if cid.startswith("3-"):
            r = Result(claim, [], error="Traceback ...\nRuntimeError: kaboom")
        results.append(r)
    meta = {"mode": "smoke", "seeds": 1, "date": "2026-12-03",
            "versions": {"sgdlab": "x", "torch": "y", "python": "z"}}
    report.write(tmp_path, results, meta)
    listed = [r["claim"]["id"] for r in
              json.loads((tmp_path / "results.json").read_text())["results"]]
    dom, log = _render(tmp_path / "report.html", tmp_path)
    assert (tmp_path / "shot.png").stat().st_size > 10_000   # something was drawn
    assert not re.search(r"Uncaught|Failed to load resource|ERR_FILE_NOT_FOUND", log), log
    parsed = _Summary()
    parsed.feed(dom)
    assert sorted(parsed.claims) == sorted(listed)
    assert parsed.seed_rows == len({seed_of(c) for c in listed})
    for cid in listed:                       # every row links to a section that exists
        assert f'id="{cid}"' in dom
    assert "How to read a verdict" in dom and "a finding &lt;with&gt; markup" in dom
    assert "kaboom" in dom                               # the ERROR claim's last line
    assert "data:image/png;base64," in dom               # claim 17's figure, embedded
