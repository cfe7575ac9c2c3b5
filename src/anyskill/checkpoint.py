"""Crash-safe checkpoints: a msgpack file written atomically (temp file, fsync, rename).

A checkpoint holds a format version, free-form metadata (epoch, env steps, config) and a
pytree's state dict. Restoring needs a template pytree of the same structure (build it with
the same config), and every leaf's shape and dtype is checked against the template, so a
checkpoint from a different config fails with a message that names the mismatching leaf.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization, traverse_util

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
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
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, tree: Any, meta: dict) -> None:
    state = jax.tree.map(np.asarray, serialization.to_state_dict(jax.device_get(tree)))
    payload = {"format": FORMAT_VERSION, "meta": meta, "state": state}
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def load_meta(path: Path) -> dict:
    return _read(path)["meta"]


def load(path: Path, template: Any) -> tuple[Any, dict]:
    """Restore a pytree shaped like ``template`` and return ``(tree, meta)``."""
    payload = _read(path)
    target = serialization.to_state_dict(template)
    flat_t = traverse_util.flatten_dict(target, keep_empty_nodes=True)
    flat_s = traverse_util.flatten_dict(payload["state"], keep_empty_nodes=True)
    missing = sorted(set(flat_t) - set(flat_s))
    extra = sorted(set(flat_s) - set(flat_t))
    if missing or extra:
        what = f"missing {'/'.join(missing[0])}" if missing else f"unexpected {'/'.join(extra[0])}"
        raise CheckpointError(
            f"{path}: checkpoint does not match this model's structure ({what}); it was "
            f"written with a different config (e.g. depth or width)"
        )
    for k, t in flat_t.items():
        s = flat_s[k]
        if hasattr(t, "shape") and (np.shape(s) != np.shape(t)):
            raise CheckpointError(
                f"{path}: leaf {'/'.join(k)} has shape {np.shape(s)} but this config expects "
                f"{np.shape(t)}; the checkpoint was written with a different config"
            )
    return serialization.from_state_dict(template, payload["state"]), payload["meta"]


def _read(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types for corrupt data
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {payload.get('format') if isinstance(payload, dict) else '?'}"
            f" (this anyskill reads format {FORMAT_VERSION})"
        )
    return payload
