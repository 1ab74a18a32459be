"""The README's "your own model" examples run as written (they are the first thing a user
copies). Each python block of that section is executed in order, in a temporary directory."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_model_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Your own model, data and loop")
    end = text.index("## The built-in zoo")
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.S)
    # the Lightning / HF snippets need a user's module and data: they are exercised by
    # tests/test_integrations_adapters.py instead
    return [b for b in blocks if "sgdlab.integrations" not in b]


def test_own_model_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _own_model_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert {r["name"] for r in scope["monitor"].records} >= {"noise_scale", "sharpness",
                                                              "effective_lr"}
    assert (tmp_path / "runs/mine/metrics.jsonl").is_file()
    assert scope["summary"]["status"] == "completed"
    assert scope["res"].suggestion > 0 and len(scope["res"].lrs) > 10
