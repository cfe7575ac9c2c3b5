"""The run-directory format shared by every algorithm and the flywheel.

A run directory holds a ``config.json`` (a frozen config dataclass as JSON), a
``metrics.jsonl`` (one JSON object per line) and atomic checkpoints (see
:mod:`anyskill.checkpoint`). This module owns how they are written and read back:

* **configs** are loaded *strictly*: a missing field, an unknown key or a value of the wrong
  type is refused with one line naming the file, the field, what was expected and what was
  found — never silently replaced by today's default (a resumed run must be the run that was
  started);
* **JSON** that does not parse is refused with the file, line and column; no ``NaN`` is ever
  written (non-finite numbers become ``null``, which every JSON reader accepts);
* **metrics rows** are appended as one ``write`` + ``flush`` + ``fsync``, and *before* the
  checkpoint of the same step: a kill between the two leaves a row newer than the checkpoint,
  which :func:`resume_metrics` drops (the resumed run writes it again); a kill in the middle
  of an append leaves a torn last line, which is dropped too. A bad line anywhere else is
  refused with its line number — good rows after it are never deleted.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from anyskill.checkpoint import atomic_write_bytes

__all__ = [
    "RunError",
    "append_metrics",
    "config_from_json",
    "config_to_json",
    "dumps",
    "load_config",
    "read_json",
    "read_metrics",
    "resume_metrics",
    "write_json",
]


class RunError(ValueError):
    """A run directory cannot be used as asked (not a run, already a run, a bad file...)."""


# ---- JSON ---------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, ±inf) replaced by None, containers recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def dumps(obj: Any, **kw) -> str:
    """``json.dumps`` that never writes ``NaN``/``Infinity`` (they become ``null``)."""
    return json.dumps(_finite(obj), allow_nan=False, **kw)


def write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` to ``path`` atomically (see :func:`dumps`)."""
    atomic_write_bytes(Path(path), (dumps(obj, indent=indent) + "\n").encode())


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunError(
            f"{where}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}; fix the file "
            "by hand (or start a new run in another directory)"
        ) from None


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; a file that is not JSON is refused naming line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RunError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return _parse(text, str(path))


# ---- configs --------------------------------------------------------------------------------


def config_to_json(cfg: Any) -> dict:
    """A config dataclass as JSON values (tuples as lists, paths as strings)."""
    return _jsonable(dataclasses.asdict(cfg))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def load_config(cls: type, path: Path) -> Any:
    """The ``cls`` config stored in ``path`` (strictly: see :func:`config_from_json`)."""
    return config_from_json(cls, read_json(path), path)


#: Field metadata key: a setting added after runs were written, whose default reproduces what
#: those runs did, so a config file without it still loads (``dataclasses.field(default=...,
#: metadata={ADDED_LATER: "issue 23"})``). Every other missing field is refused.
ADDED_LATER = "added_later"


def config_from_json(cls: type, data: Any, source: Path | str) -> Any:
    """Build the config dataclass ``cls`` from its JSON form ``data`` (read from ``source``).

    Every field must be present, no other key may be, and every value must have the field's
    type (nested configs recursively; lists become tuples, strings paths). The config's own
    ``__post_init__`` checks run too; any failure is one :class:`RunError` line naming
    ``source``."""
    try:
        return _build(cls, data, "", str(source))
    except RunError:
        raise
    except (ValueError, TypeError) as e:  # the config's own checks
        raise RunError(f"{source}: {e}") from None


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({_json_kind(v)})"


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} items"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (a string)",
    }.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _convert(tp: Any, v: Any, field: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return v
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise _Mismatch
        return _build(tp, v, field + ".", source)
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, v, field, source)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        if any(v == a and type(v) is type(a) for a in args):
            return v
        raise _Mismatch
    if origin is tuple:
        if not isinstance(v, list):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(
                _convert_item(args[0], x, f"{field}[{i}]", source) for i, x in enumerate(v)
            )
        if len(v) != len(args):
            raise _Mismatch
        return tuple(
            _convert_item(a, x, f"{field}[{i}]", source)
            for i, (a, x) in enumerate(zip(args, v, strict=True))
        )
    if tp is bool:
        if isinstance(v, bool):
            return v
        raise _Mismatch
    if tp is int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise _Mismatch
    if tp is float:
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        raise _Mismatch
    if tp is str:
        if isinstance(v, str):
            return v
        raise _Mismatch
    if tp is Path:
        if isinstance(v, str):
            return Path(v)
        raise _Mismatch
    raise TypeError(f"config field {field}: type {tp!r} has no JSON form")  # a programming error


def _convert_item(tp: Any, v: Any, field: str, source: str) -> Any:
    """An element of a list: a mismatch is reported at the element's own path."""
    try:
        return _convert(tp, v, field, source)
    except _Mismatch:
        raise _wrong(source, field, tp, v) from None


def _wrong(source: str, field: str, tp: Any, v: Any) -> RunError:
    return RunError(
        f"{source}: field '{field}' must be {_describe(tp)}, got {_show(v)}; correct it in the "
        "file (or start a new run in another directory)"
    )


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    name = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise RunError(
            f"{source}: {name} must be an object ({cls.__name__}), got {_show(data)}; "
            "this is not a config file of this kind"
        )
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise RunError(
                f"{source}: unknown field '{prefix}{key}' ({cls.__name__} has no such setting; "
                f"{hint}remove it from the file)"
            )
    kw = {}
    for f in fields:
        field = prefix + f.name
        if f.name not in data and f.metadata.get(ADDED_LATER):
            continue  # a setting newer than the run: its default is what the run did
        if f.name not in data:
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = (
                f"; today's default is {_show(_jsonable(default))}" if default is not None else ""
            )
            raise RunError(
                f"{source}: field '{field}' is missing (expected {_describe(hints[f.name])}"
                f"{shown}); add it with the value the run was started with (or start a new "
                "run in another directory)"
            )
        try:
            kw[f.name] = _convert(hints[f.name], data[f.name], field, source)
        except _Mismatch:
            raise _wrong(source, field, hints[f.name], data[f.name]) from None
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        where = f" ({prefix.rstrip('.')})" if prefix else ""
        raise RunError(f"{source}{where}: {e}") from None


# ---- metrics.jsonl ----------------------------------------------------------------------------


def append_metrics(path: Path, row: dict) -> None:
    """Append one row to ``path``: a single ``write`` of the whole line, then flush + fsync,
    so a kill leaves either the row or at most a torn last line (see :func:`read_metrics`)."""
    line = dumps(row) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict]:
    """The rows of ``path`` (none if it does not exist). A torn last line — one that does not
    parse, left by a kill in the middle of an append — is skipped; any other bad line is
    refused with its line number (the rows after it are good and must not be lost)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a blank line holds no row
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break  # torn by a kill mid-append: written again by the resumed run
            raise RunError(
                f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno}) but the "
                f"{len(lines) - i} line(s) after it are; fix or delete line {i} by hand, then "
                "resume (nothing was deleted)"
            ) from None
        if not isinstance(row, dict):
            raise RunError(
                f"{path}: line {i} must be a JSON object, got {_show(row)}; fix or delete it "
                "by hand, then resume (nothing was deleted)"
            )
        rows.append(row)
    return rows


def resume_metrics(path: Path, key: str, last: int) -> list[dict]:
    """On resume from a checkpoint taken at ``key == last`` (an epoch or a step): the rows
    up to it. Rows newer than the checkpoint (a kill between the row and its checkpoint) and
    a torn last line are dropped — the resumed run writes them again — and the file is
    rewritten atomically without them."""
    path = Path(path)
    rows = read_metrics(path)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get(key), int) or isinstance(r.get(key), bool):
            raise RunError(
                f"{path}: row {i} has no integer '{key}' (got {_show(r.get(key))}); fix or "
                "delete it by hand, then resume (nothing was deleted)"
            )
    kept = [r for r in rows if r[key] <= last]
    text = "".join(dumps(r) + "\n" for r in kept)
    if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
        atomic_write_bytes(path, text.encode())
    return kept
