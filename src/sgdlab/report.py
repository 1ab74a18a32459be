"""The reproduction report: results.json (every number), report.md and a self-contained
report.html (figures embedded as base64 PNG), each written atomically."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from sgdlab.experiments.base import Result
from sgdlab.metrics_log import atomic_write_json, atomic_write_text


def verdict_table(results: list[Result]) -> str:
    """The markdown verdict table: claim, SPEC section, verdict, seconds."""
    lines = ["| claim | SPEC | verdict | seconds |", "|---|---|---|---:|"]
    for r in results:
        lines.append(f"| {r.claim.id} | {r.claim.spec} | **{r.verdict}** | {r.seconds:.1f} |")
    return "\n".join(lines)


def to_markdown(results: list[Result], meta: dict[str, Any]) -> str:
    """report.md: the verdict table, then one section per claim."""
    out = ["# sgdlab reproduce", "",
           f"mode `{meta['mode']}`, seeds {meta['seeds']}, {meta['date']}, "
           f"sgdlab {meta['versions']['sgdlab']}, torch {meta['versions']['torch']}", "",
           verdict_table(results), ""]
    for r in results:
        out += [f"## {r.claim.id}: {r.claim.title} ({r.claim.spec}) — {r.verdict}", "",
                f"*Claim.* {r.claim.statement}", ""]
        if r.error:
            out += ["```", r.error, "```", ""]
        if r.checks:
            out += ["| check | prediction | measured | tolerance | verdict |",
                    "|---|---|---|---|---|"]
            out += [f"| {c.name} | {c.prediction} | {c.measured} | {c.tolerance} | "
                    f"{c.verdict} |" for c in r.checks]
            out.append("")
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
              "ERROR": "#8250df"}
    rows = "".join(f"<tr><td><a href='#{esc(r.claim.id)}'>{esc(r.claim.id)}</a></td>"
                   f"<td>{esc(r.claim.spec)}</td><td style='color:{colour[r.verdict]}'>"
                   f"<b>{r.verdict}</b></td><td>{r.seconds:.1f}</td></tr>" for r in results)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sgdlab reproduce"
             "</title><style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             "img{max-width:100%}</style></head><body>",
             "<h1>sgdlab reproduce</h1>",
             f"<p>mode {esc(meta['mode'])}, seeds {meta['seeds']}, {esc(meta['date'])}</p>",
             f"<table><tr><th>claim</th><th>SPEC</th><th>verdict</th><th>s</th></tr>{rows}"
             "</table>"]
    for r in results:
        parts.append(f"<h2 id='{esc(r.claim.id)}'>{esc(r.claim.title)} ({esc(r.claim.spec)})"
                     f" — <span style='color:{colour[r.verdict]}'>{r.verdict}</span></h2>"
                     f"<p><i>Claim.</i> {esc(r.claim.statement)}</p>")
        if r.error:
            parts.append(f"<pre>{esc(r.error)}</pre>")
        if r.checks:
            parts.append("<table><tr><th>check</th><th>prediction</th><th>measured</th>"
                         "<th>tolerance</th><th>verdict</th></tr>" + "".join(
                             f"<tr><td>{esc(c.name)}</td><td>{esc(c.prediction)}</td>"
                             f"<td>{esc(c.measured)}</td><td>{esc(c.tolerance)}</td>"
                             f"<td>{c.verdict}</td></tr>" for c in r.checks) + "</table>")
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
