"""The run log ``RUN/metrics.jsonl`` and atomic file writes.

``metrics.jsonl`` holds one JSON object per line, appended during training and flushed line by
line, so that a reader (or a plot of a live run) always sees whole records except perhaps a
partial last line, which :func:`read_metrics` skips. JSON has no NaN or infinity; they are
written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` and :func:`read_metrics` turns them
back into floats. The trainer's files are strict JSON instead (:func:`strict_json`): a
non-finite value is ``null`` and the record's ``"nonfinite"`` entry names it and says which it
was; :func:`read_metrics` restores those too. Torch tensors and numpy scalars/arrays become
Python numbers (or lists).

On resume the trainer cuts the file back to the number of lines recorded in the checkpoint
(:func:`truncate_to`) and appends again, so every line on disk belongs to one consistent
history.

:func:`atomic_write_text`, :func:`atomic_write_bytes` and :func:`atomic_write_json` write a
temporary file in the destination's directory, fsync it and ``os.replace`` it over the
destination: readers see the old file or the new one, never a partial one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "MetricsWriter",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "by_kind",
    "count_lines",
    "read_metrics",
    "strict_json",
    "to_jsonable",
    "truncate_to",
]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- conversion


def to_jsonable(value: Any) -> Any:
    """Return ``value`` as plain JSON data: Python numbers, strings, lists and dicts.

    Torch tensors and numpy scalars/arrays become Python scalars (0-d) or nested lists;
    non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``; tuples become
    lists; ``os.PathLike`` becomes ``str``. Anything else raises :class:`TypeError`.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # also numpy.float64, a float subclass
        value = float(value)
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise TypeError(f"metrics: dict key {key!r} is not a string or number")
            out[str(key) if not isinstance(key, str) else key] = to_jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor
        return to_jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalar or array
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metrics: cannot write a value of type {type(value).__name__}")


#: The key under which :func:`strict_json` records the non-finite values it replaced.
NONFINITE_KEY = "nonfinite"


def strict_json(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as strict JSON data (:func:`to_jsonable`), with every NaN or infinity
    replaced by ``null`` and recorded under ``"nonfinite"``: a mapping from the value's
    path (keys joined by ``.``, list positions as numbers) to ``"nan"``, ``"inf"`` or
    ``"-inf"``. ``jq`` and JavaScript read the result; :func:`read_metrics` and
    :func:`restore_nonfinite` put the floats back. The trainer writes metrics.jsonl and
    summary.json this way."""
    found: dict[str, str] = {}

    def walk(value: Any, path: str, converted: bool) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found[path] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
            return None
        if converted and isinstance(value, str) and value in _NONFINITE:
            found[path] = value  # from a tensor or an array (to_jsonable wrote the string)
            return None
        if isinstance(value, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k), converted)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i), converted)
                    for i, v in enumerate(value)]
        if isinstance(value, (str, bool, int, float)) or value is None:
            return to_jsonable(value)
        return walk(to_jsonable(value), path, True)

    if not isinstance(record, dict):
        raise TypeError(f"metrics: a record must be a dict, not {type(record).__name__}")
    out = walk(record, "", False)
    if found:
        out[NONFINITE_KEY] = found
    return out


def restore_nonfinite(record: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`strict_json`: the values listed under ``"nonfinite"`` become floats
    again (in place; the ``"nonfinite"`` entry is removed)."""
    found = record.get(NONFINITE_KEY)
    if not isinstance(found, dict):
        return record
    del record[NONFINITE_KEY]
    for path, text in found.items():
        parts = str(path).split(".")
        node: Any = record
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = _NONFINITE.get(text, math.nan)
            elif last in node and node[last] is None:
                node[last] = _NONFINITE.get(text, math.nan)
        except (KeyError, IndexError, ValueError, TypeError):
            continue
    return record


def _restore(value: Any, key: str | None = None) -> Any:
    """Undo the non-finite encoding of :func:`to_jsonable` (``kind``/``name`` stay strings)."""
    if isinstance(value, str):
        if key in ("kind", "name"):
            return value
        return _NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _restore(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def _dumps_line(record: dict[str, Any]) -> str:
    if not isinstance(record, dict):
        raise TypeError(f"metrics: a record must be a dict, not {type(record).__name__}")
    return json.dumps(to_jsonable(record), allow_nan=False) + "\n"


# --------------------------------------------------------------------------- atomic writes


def write_scalars(tb: Any, record: dict[str, Any], step: int) -> None:
    """Every numeric field of ``record`` as a TensorBoard scalar ``NAME/field`` at ``step``
    (NAME: the record's ``name``, else its ``kind``; ``kind``/``step``/``name`` skipped)."""
    prefix = record.get("name", record.get("kind"))
    for key, value in record.items():
        if key not in ("kind", "step", "name") and isinstance(value, (int, float)):
            tb.add_scalar(f"{prefix}/{key}", value, step)


def _fsync_dir(directory: Path) -> None:
    """Best effort: make a rename durable (not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path.

    The bytes go to a temporary file in the same directory (created if missing), which is
    flushed, fsynced and renamed over ``path`` with ``os.replace``. On any error the temporary
    file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`); return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; return the path.

    The file is strict JSON: a dict goes through :func:`strict_json` (tensors and numpy
    values become numbers, NaN/inf ``null`` named in the ``"nonfinite"`` entry); anything
    else through :func:`to_jsonable`. It is serialised completely before any file is
    touched, so an unserialisable object raises :class:`TypeError` and leaves an existing
    ``path`` as it was.
    """
    data = strict_json(obj) if isinstance(obj, dict) else to_jsonable(obj)
    text = json.dumps(data, indent=indent, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


# --------------------------------------------------------------------------- the log file


def _line_end_offset(path: Path, n_lines: int) -> tuple[int, int, int]:
    """Return (byte offset after the first ``n_lines`` complete lines, lines found, size)."""
    found, offset, pos = 0, 0, 0
    with open(path, "rb") as f:
        while found < n_lines:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            start = 0
            while found < n_lines:
                i = chunk.find(b"\n", start)
                if i < 0:
                    break
                found += 1
                offset = pos + i + 1
                start = i + 1
            pos += len(chunk)
    return offset, found, path.stat().st_size


def count_lines(path: str | os.PathLike) -> int:
    """Number of complete (newline-terminated) lines in ``path``; 0 if it does not exist.

    A partial last line, left by a crash in the middle of a write, is not counted.
    """
    path = Path(path)
    if not path.exists():
        return 0
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            n += chunk.count(b"\n")
    return n


def truncate_to(path: str | os.PathLike, n_lines: int) -> int:
    """Keep only the first ``n_lines`` complete lines of ``path``; return the lines kept.

    Used on resume to cut ``metrics.jsonl`` back to the checkpoint. The shortened file is
    written to a temporary file and renamed over ``path`` (atomic), so a crash here leaves
    either the old or the new file. A partial last line is always dropped. If the file has
    fewer complete lines than asked for (or does not exist), it keeps what there is and warns.
    """
    if n_lines < 0:
        raise ValueError(f"truncate_to: n_lines must be >= 0, got {n_lines}")
    path = Path(path)
    if not path.exists():
        if n_lines > 0:
            warnings.warn(f"{path}: missing; expected {n_lines} lines", stacklevel=2)
        return 0
    offset, found, size = _line_end_offset(path, n_lines)
    if found < n_lines:
        warnings.warn(f"{path}: has {found} complete lines, expected at least {n_lines}",
                      stacklevel=2)
    if offset == size:
        return found
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            left = offset
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return found


class MetricsWriter:
    """Append JSON records to a ``metrics.jsonl`` file, one line per :meth:`write`.

    The file is opened for appending (created if missing) and line-buffered; every record is
    flushed as it is written. A partial last line left by an earlier crash is removed first, so
    new records always start on a line of their own. :attr:`lines` counts the complete lines
    in the file (earlier ones included): the number a checkpoint stores for
    :func:`truncate_to`. Usable as a context manager.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = count_lines(self.path)
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                partial = f.read(1) != b"\n"
            if partial:
                warnings.warn(f"{self.path}: dropping a partial last line", stacklevel=2)
                truncate_to(self.path, self.lines)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line and flush it.

        The record is serialised completely first, so a value that cannot be written raises
        :class:`TypeError` without leaving anything in the file.
        """
        if self._file is None:
            raise ValueError(f"MetricsWriter({self.path}) is closed")
        line = _dumps_line(record)
        self._file.write(line)
        self._file.flush()
        self.lines += 1

    def sync(self) -> None:
        """Flush and fsync the file (e.g. before saving a checkpoint that records :attr:`lines`)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the file; further writes raise. Closing twice is harmless."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._file is None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetricsWriter({str(self.path)!r}, lines={self.lines})"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read every record of a ``metrics.jsonl`` file, in file order.

    A partial or corrupt last line (a crash mid-write, or a live run) is skipped silently;
    an unreadable line elsewhere, or a line that is not a JSON object, is skipped with a
    warning. Blank lines are ignored. The strings ``"nan"``, ``"inf"``, ``"-inf"`` become
    floats again, and so do the ``null`` values a ``"nonfinite"`` entry lists
    (:func:`strict_json`). Raises :class:`FileNotFoundError` if the file does not exist.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    # split leaves b"" after a final newline; anything else there is a partial last line
    last = len(raw_lines) - 1
    records: list[dict[str, Any]] = []
    for i, raw in enumerate(raw_lines):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            record = json.loads(text)
        except (UnicodeDecodeError, ValueError):
            if i < last:
                warnings.warn(f"{path}:{i + 1}: skipping an unreadable line", stacklevel=2)
            continue
        if not isinstance(record, dict):
            warnings.warn(f"{path}:{i + 1}: skipping a line that is not an object", stacklevel=2)
            continue
        if '"nan"' in text or '"inf"' in text or '"-inf"' in text:
            record = _restore(record)
        records.append(restore_nonfinite(record))
    return records


def by_kind(records: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The records whose ``"kind"`` is ``kind``, in order (records without a kind are skipped)."""
    return [r for r in records if r.get("kind") == kind]
