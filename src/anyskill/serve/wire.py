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


def unpack(frame: bytes) -> Any:
    """Decode one frame; raises :class:`WireError` for anything that is not valid msgpack with
    well-formed arrays. Decoded arrays are read-only views of the frame."""
    try:
        return msgpack.unpackb(frame, object_hook=_decode)
    except WireError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for garbage input
        raise WireError(f"not a msgpack message ({type(e).__name__}: {e})") from None


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
