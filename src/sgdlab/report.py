"""The reproduction report: results.json (every number), report.md and a self-contained
report.html (figures embedded as base64 PNG), each written atomically."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from sgdlab.experiments.base import Result
from sgdlab.experiments.seeds import SEEDS, seed_of
from sgdlab.metrics_log import atomic_write_json, atomic_write_text


def _derived(r: Result) -> str:
    return r.derived_verdict or "–"


def verdict_table(results: list[Result]) -> str:
    """The markdown verdict table: claim, SPEC section, the headline verdict (the notes'
    statements), the verdict of the derived predictions, what the notes get wrong or leave
    out, seconds."""
    lines = ["| claim | SPEC | notes | derived | what the notes get wrong / leave out | seconds |",
             "|---|---|---|---|---|---:|"]
    for r in results:
        found = "; ".join(r.findings) or "–"
        lines.append(f"| {r.claim.id} | {r.claim.spec} | **{r.verdict}** | {_derived(r)} | "
                     f"{found} | {r.seconds:.1f} |")
    return "\n".join(lines)


HOW_TO_READ = (
    "Each claim is a statement of one of the seed notes, tested by checks. A check compares "
    "a prediction with a measurement within a tolerance that was fixed before measuring "
    "(a tolerance changed after a result was seen says so in its text). PASS: the whole "
    "uncertainty interval (±2 standard errors unless stated) lies within the tolerance; "
    "FAIL: it lies wholly outside; INCONCLUSIVE: the budget could not decide (run "
    "--full for more). The 'notes' verdict judges only what the notes say; the 'derived' "
    "verdict judges predictions sgdlab or the SPEC adds (corrected forms, regimes, "
    "mechanisms): a derived FAIL is a finding about the theory, not about the notes.")


def _short(text: str, n: int = 80) -> str:
    """The first clause of a measurement, at most ``n`` characters."""
    first = text.split("; ")[0]
    return first if len(first) <= n else first[: n - 1].rstrip() + "…"


def decisive(r: Result) -> str:
    """The one number that decides a claim's headline: the first ``notes`` check whose
    verdict is the headline verdict (its name and measurement, shortened)."""
    if r.error:
        return _short(r.error.strip().splitlines()[-1] if r.error.strip() else "error")
    for c in r.checks:
        if c.basis == "notes" and c.verdict == r.verdict:
            return f"{c.name}: {_short(c.measured)}"
    return "–"


def by_seed(results: list[Result]) -> list[tuple[str, list[Result]]]:
    """The results grouped by seed note, in seed order, claims in their order."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(seed_of(r.claim.id), []).append(r)
    return sorted(groups.items())


def _seed_title(seed: str) -> str:
    stem, title = SEEDS.get(seed, (seed, "unknown seed"))
    return f"seed {seed}: {title} ({stem}.txt)"


def to_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    """report.md: how to read a verdict, the summary grouped by seed note, then one section
    per claim (the notes' statement first, then its checks, findings and figures)."""
    out = ["# sgdlab reproduce", "",
           f"mode `{meta['mode']}`, seeds {meta['seeds']}, {meta['date']}, "
           f"sgdlab {meta['versions']['sgdlab']}, torch {meta['versions']['torch']}", "",
           f"**How to read a verdict.** {HOW_TO_READ}", ""]
    for seed, group in by_seed(results):
        out += [f"### {_seed_title(seed)}", "",
                "| claim | the notes say | notes | derived | deciding number | what the notes "
                "get wrong / leave out |", "|---|---|---|---|---|---|"]
        out += [f"| [{r.claim.id}](#{r.claim.id}) | {r.claim.statement} | **{r.verdict}** | "
                f"{_derived(r)} | {decisive(r)} | {'; '.join(r.findings) or '–'} |"
                for r in group]
        out.append("")
    for _, group in by_seed(results):
        for r in group:
            out += [f"## {r.claim.id}: {r.claim.title} ({r.claim.spec}) — notes {r.verdict}, "
                    f"derived {_derived(r)}", "",
                    f"*The notes (seed {seed_of(r.claim.id)}).* {r.claim.statement}", ""]
            if r.error:
                out += ["```", r.error, "```", ""]
            if r.checks:
                out += ["| check | basis | prediction | measured | tolerance | verdict |",
                        "|---|---|---|---|---|---|"]
                out += [f"| {c.name} | {c.basis} | {c.prediction} | {c.measured} | "
                        f"{c.tolerance} | {c.verdict} |" for c in r.checks]
                out.append("")
            out += [f"- *Finding:* {f}" for f in r.findings]
            out += [f"![{r.claim.id}]({f})" for f in r.figures]
            out += [f"- {n}" for n in r.notes]
            out.append("")
    return "\n".join(out)


def _img(out_dir: Path, rel: str) -> str:
    path = out_dir / rel
    if not path.is_file():
        return f"<p>(figure {html.escape(rel)} missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(rel)}" src="data:image/png;base64,{data}">'


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;vertical-align:top;font-size:0.92em}img{max-width:100%}"
        "tr.seed th{background:#f3f4f6;text-align:left}.howto{background:#f6f8fa;"
        "border-left:4px solid #0969da;padding:0.5em 1em}blockquote{border-left:4px solid "
        "#d0d7de;margin:0.5em 0;padding:0 1em;color:#333}")


def to_html(results: list[Result], meta: dict[str, Any], out_dir: Path) -> str:
    """report.html (self-contained, no scripts): a one-screen summary of every claim grouped
    by seed note (statement, notes and derived verdicts, the deciding number, findings;
    each linked to its section), how to read a verdict, then the sections — the notes'
    statement first, then checks, findings and figures."""
    esc = html.escape
    colour = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#9a6700",
              "ERROR": "#8250df", None: "#57606a"}

    def badge(v: str | None) -> str:
        return f"<b style='color:{colour.get(v, colour[None])}'>{esc(v or '–')}</b>"

    rows = []
    for seed, group in by_seed(results):
        rows.append(f"<tr class='seed'><th colspan='6'>{esc(_seed_title(seed))}</th></tr>")
        rows += [f"<tr class='claim' data-claim='{esc(r.claim.id)}'><td><a href='#"
                 f"{esc(r.claim.id)}'>{esc(r.claim.id)}</a></td><td>{esc(r.claim.statement)}"
                 f"</td><td>{badge(r.verdict)}</td><td>{badge(r.derived_verdict)}</td>"
                 f"<td>{esc(decisive(r))}</td><td>{esc('; '.join(r.findings) or '–')}</td>"
                 "</tr>" for r in group]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             "<title>sgdlab reproduce</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>sgdlab reproduce: the claims of the SGD notes, measured</h1>",
             f"<p>mode {esc(meta['mode'])}, seeds {meta['seeds']}, {esc(meta['date'])}, "
             f"sgdlab {esc(meta['versions']['sgdlab'])}, torch "
             f"{esc(meta['versions']['torch'])}</p>",
             "<table id='summary'><tr><th>claim</th><th>the notes say</th><th>notes</th>"
             "<th>derived</th><th>deciding number</th><th>what the notes get wrong / leave "
             f"out</th></tr>{''.join(rows)}</table>",
             f"<div class='howto'><b>How to read a verdict.</b> {esc(HOW_TO_READ)}</div>"]
    for seed, group in by_seed(results):
        for r in group:
            parts.append(f"<h2 id='{esc(r.claim.id)}'>{esc(r.claim.id)}: {esc(r.claim.title)}"
                         f" ({esc(r.claim.spec)}) — notes {badge(r.verdict)}, derived "
                         f"{badge(r.derived_verdict)}</h2>"
                         f"<blockquote><i>The notes (seed {esc(seed)}):</i> "
                         f"{esc(r.claim.statement)}</blockquote>")
            if r.error:
                parts.append(f"<pre>{esc(r.error)}</pre>")
            if r.checks:
                parts.append("<table><tr><th>check</th><th>basis</th><th>prediction</th>"
                             "<th>measured</th><th>tolerance</th><th>verdict</th></tr>"
                             + "".join(f"<tr><td>{esc(c.name)}</td><td>{esc(c.basis)}</td>"
                                       f"<td>{esc(c.prediction)}</td><td>{esc(c.measured)}"
                                       f"</td><td>{esc(c.tolerance)}</td>"
                                       f"<td>{badge(c.verdict)}</td></tr>" for c in r.checks)
                             + "</table>")
            if r.findings:
                parts.append("<ul>" + "".join(f"<li><i>Finding:</i> {esc(f)}</li>"
                                              for f in r.findings) + "</ul>")
            parts += [_img(out_dir, f) for f in r.figures]
            if r.notes:
                parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in r.notes)
                             + "</ul>")
            parts.append("<p><a href='#summary'>back to the summary</a></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out_dir: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """Write results.json, report.md and report.html into ``out_dir``."""
    atomic_write_json(out_dir / "results.json",
                      {"meta": meta, "results": [r.to_dict() for r in results]})
    atomic_write_text(out_dir / "report.md", to_markdown(results, meta))
    atomic_write_text(out_dir / "report.html", to_html(results, meta, out_dir))
