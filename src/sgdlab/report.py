"""The reproduction report: results.json (every number), report.md and a self-contained
report.html (figures embedded as base64 PNG), each written atomically."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from sgdlab.experiments.base import Result
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


def to_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    """report.md: the verdict table, then one section per claim (its checks with their
    basis: ``notes`` checks make the headline, ``derived`` ones are findings about the
    theory)."""
    out = ["# sgdlab reproduce", "",
           f"mode `{meta['mode']}`, seeds {meta['seeds']}, {meta['date']}, "
           f"sgdlab {meta['versions']['sgdlab']}, torch {meta['versions']['torch']}", "",
           "*notes*: verdict on the statements the seed notes make; *derived*: verdict on "
           "the predictions sgdlab or the SPEC adds (a FAIL there is a finding about the "
           "theory, not about the notes).", "",
           verdict_table(results), ""]
    for r in results:
        out += [f"## {r.claim.id}: {r.claim.title} ({r.claim.spec}) — notes {r.verdict}, "
                f"derived {_derived(r)}", "", f"*Claim.* {r.claim.statement}", ""]
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


def to_html(results: list[Result], meta: dict[str, Any], out_dir: Path) -> str:
    """report.html: the same content, readable in a browser without a server."""
    esc = html.escape
    colour = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#9a6700",
              "ERROR": "#8250df", None: "#57606a"}

    def badge(v: str | None) -> str:
        return f"<b style='color:{colour[v]}'>{esc(v or '–')}</b>"

    rows = "".join(f"<tr><td><a href='#{esc(r.claim.id)}'>{esc(r.claim.id)}</a></td>"
                   f"<td>{esc(r.claim.spec)}</td><td>{badge(r.verdict)}</td>"
                   f"<td>{badge(r.derived_verdict)}</td>"
                   f"<td>{esc('; '.join(r.findings) or '–')}</td>"
                   f"<td>{r.seconds:.1f}</td></tr>" for r in results)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sgdlab reproduce"
             "</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             "img{max-width:100%}</style></head><body>",
             "<h1>sgdlab reproduce</h1>",
             f"<p>mode {esc(meta['mode'])}, seeds {meta['seeds']}, {esc(meta['date'])}</p>",
             "<p><i>notes</i>: verdict on the statements the seed notes make; <i>derived</i>: "
             "verdict on the predictions sgdlab or the SPEC adds (a FAIL there is a finding "
             "about the theory, not about the notes).</p>",
             "<table><tr><th>claim</th><th>SPEC</th><th>notes</th><th>derived</th>"
             f"<th>what the notes get wrong / leave out</th><th>s</th></tr>{rows}</table>"]
    for r in results:
        parts.append(f"<h2 id='{esc(r.claim.id)}'>{esc(r.claim.title)} ({esc(r.claim.spec)})"
                     f" — notes {badge(r.verdict)}, derived {badge(r.derived_verdict)}</h2>"
                     f"<p><i>Claim.</i> {esc(r.claim.statement)}</p>")
        if r.error:
            parts.append(f"<pre>{esc(r.error)}</pre>")
        if r.checks:
            parts.append("<table><tr><th>check</th><th>basis</th><th>prediction</th>"
                         "<th>measured</th><th>tolerance</th><th>verdict</th></tr>" + "".join(
                             f"<tr><td>{esc(c.name)}</td><td>{esc(c.basis)}</td>"
                             f"<td>{esc(c.prediction)}</td><td>{esc(c.measured)}</td>"
                             f"<td>{esc(c.tolerance)}</td><td>{badge(c.verdict)}</td></tr>"
                             for c in r.checks) + "</table>")
        if r.findings:
            parts.append("<ul>" + "".join(f"<li><i>Finding:</i> {esc(f)}</li>"
                                          for f in r.findings) + "</ul>")
        parts += [_img(out_dir, f) for f in r.figures]
        if r.notes:
            parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in r.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(out_dir: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """Write results.json, report.md and report.html into ``out_dir``."""
    atomic_write_json(out_dir / "results.json",
                      {"meta": meta, "results": [r.to_dict() for r in results]})
    atomic_write_text(out_dir / "report.md", to_markdown(results, meta))
    atomic_write_text(out_dir / "report.html", to_html(results, meta, out_dir))
