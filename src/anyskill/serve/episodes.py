"""Episodes from robots to the learner: the upload channel of the policy server.

Deployment is the data engine: a robot that runs a served policy sends every episode it
finishes back to the server that served it, which appends it to the episode store with the
policy version that acted. This is how the flywheel's real-robot mode collects a round
(:mod:`anyskill.flywheel.robots`).

Protocol. Besides the policy endpoint (any path), the server answers websocket connections on
:data:`PATH` (``/episodes``). There the server speaks first, one binary frame
``{"features": {name: {"shape", "dtype"}}, "policy_version": str}``: what the store records
and which policy is being collected. Then every binary frame from the robot is one episode::

    {"task": str, "success": bool | None,
     "frames": {feature: [T, *shape] array, ...},   # every feature the server announced
     "intervention": [T] bool,                      # frames a person or a fallback acted
     "episode_info": {str: int | float | str}}      # optional

and gets one reply: a binary frame ``{"stored": episode_index}`` once the episode is durable
in the store, or a text frame ``{"error", "field", "message"}`` (see :mod:`~anyskill.serve.wire`)
naming what was wrong; nothing is stored then. An episode a robot did not finish (it
disconnected, crashed or was stopped) is simply never sent: the store only ever holds whole
episodes.

The robot side (:class:`EpisodeUploader`) imports numpy, msgpack and websockets only.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from anyskill.serve import wire

PATH = "/episodes"
#: fields of one uploaded episode besides the frames
_INFO_TYPES = (int, float, str, bool)


class EpisodeChannelClosed(ConnectionError):
    """The server stopped taking episodes (a flywheel round ended, or it shut down)."""


class EpisodeRejected(ValueError):
    """An uploaded episode does not fit the store; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One per-frame feature the store records."""

    shape: tuple[int, ...]
    dtype: str


def store_features(writer: Any) -> dict[str, FeatureSpec]:
    """The per-frame features of ``writer``'s store (an ``EpisodeWriter``), as upload specs."""
    info = writer.info
    out = {
        k: FeatureSpec(tuple(info.features[k].shape), info.features[k].dtype)
        for k in info.user_keys
    }
    for k in info.video_keys:
        out[k] = FeatureSpec(tuple(info.features[k].shape), "uint8")
    return out


class EpisodeSink:
    """Server side: validates uploaded episodes and appends them to an episode store.

    ``writer``: an open ``anyskill.data.writer.EpisodeWriter`` (owned by the caller, who
    closes it); ``policy_version``: written with every episode; ``on_stored(index, episode)``
    is called after each episode is durable (the flywheel counts its round with it).
    Thread-safe: the server calls :meth:`store` from a worker thread."""

    def __init__(self, writer: Any, policy_version: str, on_stored=None):
        self.writer = writer
        self.policy_version = policy_version
        self.features = store_features(writer)
        self.on_stored = on_stored
        self._lock = threading.Lock()
        self.stored: list[int] = []

    def hello(self) -> dict[str, Any]:
        """The server's first frame on the upload channel."""
        return {
            "features": {
                k: {"shape": list(f.shape), "dtype": f.dtype} for k, f in self.features.items()
            },
            "policy_version": self.policy_version,
        }

    def check(self, msg: Any) -> dict[str, Any]:
        """``msg`` as a valid episode, or :class:`EpisodeRejected` naming the field."""
        if not isinstance(msg, dict):
            raise EpisodeRejected("<episode>", f"expected a map, got {type(msg).__name__}")
        msg = {k.decode() if isinstance(k, bytes) else k: v for k, v in msg.items()}
        task = msg.get("task")
        if isinstance(task, bytes):
            task = task.decode("utf-8", errors="replace")
        if not isinstance(task, str):
            raise EpisodeRejected("task", f"expected the instruction text, got {task!r}")
        success = msg.get("success")
        if success is not None and not isinstance(success, bool | np.bool_):
            raise EpisodeRejected("success", f"expected true, false or nil, got {success!r}")
        frames = msg.get("frames")
        if not isinstance(frames, dict):
            raise EpisodeRejected("frames", "expected a map of feature name -> [T, ...] array")
        frames = {k.decode() if isinstance(k, bytes) else k: v for k, v in frames.items()}
        missing = sorted(set(self.features) - set(frames))
        if missing:
            raise EpisodeRejected(
                f"frames.{missing[0]}",
                f"missing; this store records {sorted(self.features)} every frame",
            )
        out_frames, length = {}, None
        for name, spec in self.features.items():
            arr = frames[name]
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
                raise EpisodeRejected(f"frames.{name}", "expected a numeric array [T, ...]")
            if arr.shape[1:] != spec.shape:
                raise EpisodeRejected(
                    f"frames.{name}", f"frame shape {arr.shape[1:]}, expected {spec.shape}"
                )
            if length is None:
                length = len(arr)
            elif len(arr) != length:
                raise EpisodeRejected(
                    f"frames.{name}", f"{len(arr)} frames, but other features have {length}"
                )
            if spec.dtype == "uint8" and arr.dtype != np.uint8:
                raise EpisodeRejected(f"frames.{name}", f"dtype {arr.dtype}, expected uint8")
            if spec.dtype != "uint8":
                arr = arr.astype(spec.dtype)
                if not np.isfinite(arr).all():
                    raise EpisodeRejected(f"frames.{name}", "contains NaN or infinity")
            out_frames[name] = arr
        if not length:
            raise EpisodeRejected("frames", "an episode needs at least one frame")
        iv = msg.get("intervention")
        iv = np.zeros(length, bool) if iv is None else np.asarray(iv)
        if iv.shape != (length,) or iv.dtype.kind not in "bui":
            raise EpisodeRejected("intervention", f"expected [{length}] bools, got {iv.shape}")
        info = msg.get("episode_info") or {}
        if not isinstance(info, dict):
            raise EpisodeRejected("episode_info", "expected a map of name -> scalar")
        info = {k.decode() if isinstance(k, bytes) else k: v for k, v in info.items()}
        for k, v in info.items():
            if not isinstance(k, str) or not isinstance(v, _INFO_TYPES):
                raise EpisodeRejected(f"episode_info.{k}", f"expected a scalar, got {v!r}")
        return {
            "task": task,
            "success": None if success is None else bool(success),
            "frames": out_frames,
            "intervention": iv.astype(bool),
            "episode_info": info,
        }

    def store(self, episode: Mapping[str, Any]) -> int:
        """Append a checked episode; returns its index in the store once it is durable."""
        corrected = bool(episode["intervention"].any())
        with self._lock:
            committed = self.writer.add_episode(
                episode["frames"],
                task=episode["task"],
                intervention=episode["intervention"],
                success=episode["success"],
                source="corrected" if corrected else "autonomous",
                policy_version=self.policy_version,
                episode_info={**episode["episode_info"], "corrected": corrected},
            )
            index = int(committed.episode_index)
            self.stored.append(index)
        if self.on_stored is not None:
            self.on_stored(index, episode)
        return index


class EpisodeUploader:
    """Robot side: sends finished episodes to a server's upload channel (no JAX needed).

    ``with EpisodeUploader("ws://host:8000") as up: up.send(frames, task, success, iv)``.
    ``features`` and ``policy_version`` are what the server announced."""

    def __init__(self, server: str, timeout_s: float = 30.0):
        from anyskill.serve.runtime import _PLAIN, connect

        base = server.rstrip("/")
        self._ws = connect(
            base + PATH,
            open_timeout=timeout_s,
            max_size=None,
            proxy=None,
            compression=None,
            **_PLAIN,
        )
        self.timeout_s = timeout_s
        hello = wire.unpack(self._ws.recv(timeout=timeout_s))
        self.features = {k: tuple(v["shape"]) for k, v in hello["features"].items()}
        self.policy_version = hello["policy_version"]

    def send(
        self,
        frames: Mapping[str, np.ndarray],
        task: str,
        success: bool | None,
        intervention: np.ndarray | None = None,
        episode_info: Mapping[str, Any] | None = None,
    ) -> int:
        """Upload one finished episode; returns its index in the server's store. Raises
        :class:`EpisodeRejected` (naming the field) if the server refused it."""
        msg = {
            "task": task,
            "success": None if success is None else bool(success),
            "frames": {k: np.asarray(v) for k, v in frames.items()},
            "intervention": None if intervention is None else np.asarray(intervention, bool),
            "episode_info": dict(episode_info or {}),
        }
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(wire.pack(msg))
            reply = self._ws.recv(timeout=self.timeout_s)
        except ConnectionClosed as e:
            raise EpisodeChannelClosed(
                f"the server closed the episode channel ({e}); this episode was not stored "
                "(a flywheel robot round closes it once it has its episodes)"
            ) from None
        if isinstance(reply, str):
            err = wire.parse_error(reply)
            raise EpisodeRejected(err.get("field", "<episode>"), err.get("message", reply))
        return int(wire.unpack(reply)["stored"])

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> EpisodeUploader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
