"""The wire format of the policy server: msgpack with numpy arrays, as openpi's clients send it.

Every frame is one msgpack object. A numpy array travels as a map with the byte keys
``__ndarray__`` (true), ``data`` (the raw C-order bytes), ``dtype`` (``dtype.str``, e.g.
``"<f4"``) and ``shape``; a numpy scalar as ``__npgeneric__``/``data``/``dtype``. Object,
void and complex dtypes are refused both ways. This is the convention of the
``openpi-client`` package, so its ``WebsocketClientPolicy`` talks to our server unchanged.

Errors travel as *text* frames (binary frames are always msgpack): openpi-client raises an
exception carrying the text of any text frame, so an unmodified openpi client surfaces our
errors instead of crashing on them. The text is a JSON object ``{"error": kind, "field":
name, "message": ...}`` so our own runtime can read the field back (:func:`parse_error`).

Only numpy and msgpack are imported: the robot-side runtime uses this module too.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = ("O", "V", "c")  # object, void/structured, complex


class WireError(ValueError):
    """A frame is not a valid msgpack-numpy message."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        if obj.dtype.kind in _REFUSED_KINDS:
            raise WireError(f"cannot send numpy dtype {obj.dtype} (object/void/complex)")
        if isinstance(obj, np.ndarray):
            return {
                b"__ndarray__": True,
                b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str,
                b"shape": list(obj.shape),
            }
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, list | tuple) or not all(
            isinstance(n, int) and n >= 0 for n in shape
        ):
            raise WireError(f"array shape must be a list of non-negative ints, got {shape!r}")
        if not isinstance(data, bytes):
            raise WireError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise WireError(
                f"array of shape {tuple(shape)} {dtype} needs {expected} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError) as e:
            raise WireError(f"bad numpy scalar of dtype {dtype}: {e}") from None
    return obj


def _dtype(text: Any) -> np.dtype:
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise WireError(f"unknown array dtype {text!r}") from None
    if dtype.kind in _REFUSED_KINDS:
        raise WireError(f"array dtype {dtype} is not accepted (object/void/complex)")
    return dtype


def pack(obj: Any) -> bytes:
    """One msgpack frame; numpy arrays and scalars anywhere inside ``obj`` are encoded."""
    return msgpack.packb(obj, default=_encode)


def unpack(frame: bytes, max_items: int | None = None) -> Any:
    """Decode one frame; raises :class:`WireError` for anything that is not valid msgpack with
    well-formed arrays. Decoded arrays are read-only views of the frame.

    ``max_items`` bounds the decoder's work on untrusted frames: no array or map may be
    longer, and the decoder stops once the arrays and maps it has built hold more elements
    in total (a numpy array counts as one map). Without it a 4 MB frame of four million
    empty maps takes half a second to decode."""
    if max_items is None:
        hooks: dict[str, Any] = {"object_hook": _decode}
    else:
        hooks = _bounded_hooks(max_items)
        hooks |= {"max_array_len": max_items, "max_map_len": max_items}
    try:
        return msgpack.unpackb(frame, **hooks)
    except WireError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for garbage input
        if max_items is not None and "exceeds max_" in str(e):  # a container header too long
            raise WireError(f"{e}: {_TOO_MANY.format(max_items)}") from None
        raise WireError(f"not a msgpack message ({type(e).__name__}: {e})") from None


_TOO_MANY = (
    "more than max_items={} arrays, maps and elements in one frame (send numpy arrays, "
    "not nested lists)"
)


def _bounded_hooks(max_items: int) -> dict[str, Any]:
    """msgpack hooks that count every built array and map (itself plus its elements) and
    abort the decode beyond ``max_items``; msgpack calls them as each container completes."""
    count = 0

    def spend(n: int) -> None:
        nonlocal count
        count += n
        if count > max_items:
            raise WireError(_TOO_MANY.format(max_items))

    def list_hook(items: list) -> list:
        spend(1 + len(items))
        return items

    def object_hook(obj: dict) -> Any:
        spend(1 + len(obj))
        return _decode(obj)

    return {"list_hook": list_hook, "object_hook": object_hook}


# ------------------------------------------------------------------------------ errors

ERROR_KINDS = ("bad_frame", "invalid_observation", "too_large", "policy_failed", "overloaded")


def error_text(kind: str, field: str, message: str) -> str:
    """The text frame that reports a failed request (the connection stays open)."""
    return json.dumps({"error": kind, "field": field, "message": message})


def parse_error(text: str) -> dict[str, str]:
    """The ``{"error", "field", "message"}`` of an error frame (also for foreign servers,
    whose error text, e.g. an openpi traceback, lands in ``message``)."""
    try:
        out = json.loads(text)
        if isinstance(out, dict) and "error" in out:
            return {k: str(out.get(k, "")) for k in ("error", "field", "message")}
    except ValueError:
        pass
    return {"error": "server_error", "field": "", "message": text}
