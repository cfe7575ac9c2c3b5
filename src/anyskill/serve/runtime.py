"""Robot-side runtime: execute action chunks from a remote policy server in real time.

Imports only the standard library, numpy, msgpack and websockets (no JAX, no flax, no
anyskill module that pulls them in), so it runs on a robot's own computer; a test checks
``sys.modules`` after importing it.

Timing (one control step every ``1 / control_hz`` seconds; ``H`` actions per chunk, of which
``execute_horizon`` are meant to be executed before the next one takes over)::

    step t0: send obs(t0) ----------- network + inference -----------> chunk C arrives
    steps t0, t0+1, ...: keep executing the previous chunk (or the fallback)
    step t1 (first step after C arrives): execute C[t1 - t0]  -- aligned by the steps that
        passed since obs(t0) was taken, because C[0] was planned for step t0 --
    when ``lead`` of C's first ``execute_horizon`` actions remain: send obs(now) for the next

The delay d (control steps from a request to its chunk being usable) is estimated online
from the last round trips (a high quantile, ``delay_quantile``); by default ``lead = d - 1``,
so the next chunk arrives as the current one's execute horizon ends, and when d exceeds the
execute horizon requests simply follow each other (the effective horizon is d).

How a new chunk joins the old plan:

* **real-time chunking** (``realtime``; used when the server announces it): each request
  carries the rest of the current plan from the observation's step on and the expected
  delay d; the policy returns a chunk whose first d actions are those (they execute while it
  is computed) and whose next ones follow on from them (Black et al., 2025) — how closely
  depends on the server's mask (``anyskill serve --realtime-mask``): smaller jumps at the
  switch, but on a reactive policy no more success than naive switching (BENCHMARKS.md);
* otherwise **blending**: the old plan cross-fades into the new chunk over ``blend_steps``;
  ``blend_steps=0`` switches at once (naive chunking).

A late chunk leaves the robot on the rest of its current one (open loop, to the end of its
``H`` actions). Only when no chunk covers the step (all spent, or the link is down) does
the local ``fallback(obs) -> action`` act; the frame is marked as an intervention and the
first fresh chunk hands control back. A reply that arrives ``H`` or more steps after its
observation is stale and dropped.

The link (:class:`PolicyLink`) owns a synchronous websocket on a background thread, keeps at
most one request in flight, reconnects with exponential backoff, and can inject latency,
jitter and disconnects to test all of the above.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import math
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
import websockets
from websockets.sync.client import ClientConnection, connect

from anyskill.serve import wire

log = logging.getLogger("anyskill.serve.runtime")

# websockets >= 16 wants ``connect`` as a context manager unless ``legacy=True``; we own the
# connection's lifetime (it outlives any one block), so ask for the plain connection.
_PLAIN = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}

Fallback = Callable[[dict[str, Any]], np.ndarray]


def hold_still(action_dim: int) -> Fallback:
    """The simplest fallback: command zero velocity."""
    zero = np.zeros(action_dim, np.float32)
    return lambda obs: zero


# ----------------------------------------------------------------------------- link


def check_server_url(url: str) -> str:
    """``url`` if it is a policy server address ``ws://HOST:PORT`` (or ``wss://``, with an
    optional path), else a ValueError saying so; a typo fails here, not after a timeout."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("ws", "wss") and bool(parts.hostname) and parts.port is not None
    except ValueError:  # a port that is not a number in 0..65535
        ok = False
    if not ok:
        raise ValueError(f"server URL {url!r} is not of the form ws://HOST:PORT")
    return url


@dataclasses.dataclass(frozen=True)
class LinkFaults:
    """Faults injected on the robot side of the link (to test the runtime)."""

    latency_ms: float = 0.0
    """Extra delay added to every reply."""
    jitter_ms: float = 0.0
    """Std of Gaussian noise on that delay (the delay never goes below zero)."""
    disconnect_every_s: float = 0.0
    """Drop the connection after this many seconds connected on average (0: never): each
    time drawn uniformly from [0.5, 1.5] x this, so drops do not phase-lock with episodes.
    An in-flight reply is lost."""
    disconnect_for_s: float = 1.0
    """How long the link stays down after an injected drop."""
    seed: int = 0

    def __post_init__(self):
        for f in ("latency_ms", "jitter_ms", "disconnect_every_s", "disconnect_for_s"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One answered (or failed) request."""

    tag: int
    """The caller's tag of the request (the control step its observation was taken at)."""
    actions: np.ndarray | None
    """[H, A] float32, or None when the request failed."""
    latency_s: float
    """Send to delivery, including injected delay."""
    error: dict[str, str] | None = None
    """``{"error", "field", "message"}`` of an error reply or a link failure."""
    server_timing: dict[str, float] = dataclasses.field(default_factory=dict)


class PolicyLink:
    """A websocket to a policy server on a background thread; one request in flight."""

    def __init__(
        self,
        url: str,
        faults: LinkFaults = LinkFaults(),
        reply_timeout_s: float = 2.0,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        max_reply_bytes: int = 16 << 20,
    ):
        self.url = check_server_url(url)
        self.faults = faults
        self.reply_timeout_s = reply_timeout_s
        self.backoff_s = backoff_s
        self.max_reply_bytes = max_reply_bytes
        self.metadata: dict[str, Any] | None = None
        self.connects = 0
        self.drops = 0
        self._ws: ClientConnection | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._request: tuple[dict[str, Any], int] | None = None
        self._busy = False
        self._reply: Reply | None = None
        self._connected = threading.Event()
        self._rng = random.Random(faults.seed)
        self._started = time.monotonic()
        self._next_drop = self._started + self._time_to_drop()
        self._down_until = 0.0
        self._thread = threading.Thread(target=self._run, name="policy-link", daemon=True)

    # ---- caller side (control loop) ------------------------------------------------------

    def start(self, wait_s: float = 0.0) -> PolicyLink:
        """Start the thread; optionally wait up to ``wait_s`` for the first connection."""
        self._thread.start()
        if wait_s:
            self._connected.wait(wait_s)
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return self._busy

    def request(self, obs: dict[str, Any], tag: int) -> bool:
        """Send ``obs`` unless disconnected or a request is in flight; True when sent."""
        with self._lock:
            if self._busy or not self._connected.is_set():
                return False
            self._request, self._busy = (obs, tag), True
        self._wake.set()
        return True

    def poll(self) -> Reply | None:
        """The reply that arrived since the last poll, if any."""
        with self._lock:
            reply, self._reply = self._reply, None
            return reply

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        self._drop_socket()

    def __enter__(self) -> PolicyLink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- link thread ---------------------------------------------------------------------

    def _deliver(self, reply: Reply) -> None:
        with self._lock:
            self._reply, self._busy, self._request = reply, False, None

    def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        self._connected.clear()
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def _injected_drop_due(self) -> bool:
        f = self.faults
        now = time.monotonic()
        if f.disconnect_every_s and now >= self._next_drop:
            self._next_drop = now + self._time_to_drop()
            self._down_until = now + f.disconnect_for_s
            return True
        return False

    def _time_to_drop(self) -> float:
        return self.faults.disconnect_every_s * self._rng.uniform(0.5, 1.5)

    def _connect(self) -> bool:
        try:
            ws = connect(
                self.url,
                compression=None,
                max_size=self.max_reply_bytes,
                open_timeout=self.reply_timeout_s,
                proxy=None,
                **_PLAIN,
            )
            self.metadata = wire.unpack(ws.recv(timeout=self.reply_timeout_s))
        except Exception as e:  # refused, timeout, bad handshake: retry with backoff
            log.debug("connect to %s failed: %s", self.url, e)
            return False
        self._ws = ws
        self.connects += 1
        self._next_drop = time.monotonic() + self._time_to_drop()
        self._connected.set()
        return True

    def _run(self) -> None:
        backoff = self.backoff_s[0]
        while not self._stop.is_set():
            if self._ws is None:
                down = self._down_until - time.monotonic()
                if down > 0:  # an injected outage: the network is gone, not the server
                    self._stop.wait(down)
                    continue
                if self._connect():
                    backoff = self.backoff_s[0]
                else:
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, self.backoff_s[1])
                continue
            if self._injected_drop_due():
                self.drops += 1
                self._drop_socket()
                with self._lock:
                    pending = self._request
                if pending is not None:  # accepted but not yet sent: it fails too
                    self._deliver(Reply(pending[1], None, 0.0, {"error": "disconnected"}))
                continue
            if not self._wake.wait(0.02):
                continue
            self._wake.clear()
            with self._lock:
                req = self._request
            if req is None:
                continue
            self._exchange(*req)

    def _exchange(self, obs: dict[str, Any], tag: int) -> None:
        sent = time.monotonic()
        try:
            self._ws.send(wire.pack(obs))
            frame = self._ws.recv(timeout=self.reply_timeout_s)
        except (TimeoutError, websockets.ConnectionClosed, OSError) as e:
            # A reply this late (or none) desynchronises the request/reply stream: reconnect.
            self.drops += 1
            self._drop_socket()
            kind = "timeout" if isinstance(e, TimeoutError) else "disconnected"
            self._deliver(Reply(tag, None, time.monotonic() - sent, {"error": kind}))
            return
        f = self.faults
        jitter = self._rng.gauss(0.0, f.jitter_ms) if f.jitter_ms else 0.0
        end = sent + max(0.0, f.latency_ms + jitter) / 1e3
        while time.monotonic() < end:  # the reply is "in the network"; a drop loses it
            if self._injected_drop_due():
                self.drops += 1
                self._drop_socket()
                self._deliver(Reply(tag, None, time.monotonic() - sent, {"error": "disconnected"}))
                return
            self._stop.wait(min(0.005, max(end - time.monotonic(), 0.0)))
        latency = time.monotonic() - sent
        if isinstance(frame, str):
            self._deliver(Reply(tag, None, latency, wire.parse_error(frame)))
            return
        try:
            msg = wire.unpack(frame)
            actions = np.asarray(msg["actions"], np.float32)
            timing = dict(msg.get("server_timing", {}))
        except (wire.WireError, KeyError, TypeError, ValueError) as e:
            self._deliver(Reply(tag, None, latency, {"error": "bad_reply", "message": str(e)}))
            return
        self._deliver(Reply(tag, actions, latency, None, timing))


# ----------------------------------------------------------------------------- recording


@dataclasses.dataclass
class ExecutionLog:
    """What the robot did in one episode, one entry per control step."""

    task: str = ""
    timestamp: list[float] = dataclasses.field(default_factory=list)
    """Seconds since the episode started."""
    state: list[np.ndarray] = dataclasses.field(default_factory=list)
    action: list[np.ndarray] = dataclasses.field(default_factory=list)
    """The action actually executed (after blending, or the fallback's/override's)."""
    intervention: list[bool] = dataclasses.field(default_factory=list)
    """True when the fallback or an override acted instead of the policy."""
    latency_ms: list[float] = dataclasses.field(default_factory=list)
    """Round trip of the chunk that produced the action (NaN for interventions)."""
    boundary: list[bool] = dataclasses.field(default_factory=list)
    """True on the step a new chunk (or the fallback) took over."""
    images: list[np.ndarray] = dataclasses.field(default_factory=list)
    """Camera frames, when the runtime records images."""
    switch_gap: list[float] = dataclasses.field(default_factory=list)
    """Where a new chunk took over from an old plan that still had an action for the step:
    the distance between the two actions (the jump a naive switch makes); NaN elsewhere."""

    def __len__(self) -> int:
        return len(self.action)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "timestamp": np.asarray(self.timestamp, np.float64),
            "state": np.asarray(self.state, np.float32),
            "action": np.asarray(self.action, np.float32),
            "intervention": np.asarray(self.intervention, bool),
            "latency_ms": np.asarray(self.latency_ms, np.float32),
            "boundary": np.asarray(self.boundary, bool),
            "switch_gap": np.asarray(self.switch_gap, np.float32),
        }
        if self.images:
            out["images"] = np.asarray(self.images, np.uint8)
        return out

    def save_npz(self, path) -> None:
        np.savez_compressed(path, task=np.asarray(self.task), **self.arrays())


def log_to_store(
    log_: ExecutionLog,
    writer: Any,
    success: bool | None,
    policy_version: str = "",
    camera: str | None = None,
    episode_info: dict[str, Any] | None = None,
):
    """Commit one executed episode to an episode store (``anyskill.data.writer.EpisodeWriter``,
    created with features ``observation.state`` and ``action``, plus ``camera`` if given).

    Frames where the fallback (or an override) acted are flagged ``intervention``; the
    episode's source is ``corrected`` if any frame was, else ``autonomous``."""
    if not len(log_):
        raise ValueError("log_to_store: the execution log is empty")
    arr = log_.arrays()
    for t in range(len(log_)):
        frame = {"observation.state": arr["state"][t], "action": arr["action"][t]}
        if camera is not None:
            frame[camera] = arr["images"][t]
        writer.add_frame(frame, task=log_.task, intervention=bool(arr["intervention"][t]))
    source = "corrected" if arr["intervention"].any() else "autonomous"
    return writer.end_episode(
        success=success, source=source, policy_version=policy_version, episode_info=episode_info
    )


# ----------------------------------------------------------------------------- runtime


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How chunks are scheduled, blended and replaced by the fallback."""

    execute_horizon: int | None = None
    """Actions of each chunk to execute before the next one is due (default: the
    ``execute_horizon`` the server announces, what the policy was trained to execute; else
    its whole chunk)."""
    lead: int | None = None
    """Request the next chunk when this many of the execute horizon's actions remain after
    the current step (covers ``lead + 1`` control steps of round trip without a late chunk).
    None: the estimated delay minus one, re-estimated from every round trip."""
    blend_steps: int = 3
    """Steps over which the old plan hands over to a new chunk (linear cross-fade; not with
    real-time chunking, whose chunks continue the plan themselves). 0: naive switching."""
    realtime: bool | None = None
    """Real-time chunking: send the committed plan with each request and execute chunks
    that continue it. None: when the server announces it (metadata ``realtime``); True:
    required (an error if the server cannot); False: never."""
    control_hz: float | None = None
    """The control rate (for the delay in steps); None: the rate the server announces."""
    delay_window: int = 20
    """Round trips the delay estimate looks back over."""
    delay_quantile: float = 0.9
    """Quantile of those round trips taken as the delay (high: jitter rarely exceeds it)."""
    state_key: str = "observation/state"
    """Observation field recorded as the robot state."""
    image_key: str | None = None
    """Observation field recorded as camera frames (None: no images)."""
    wait_first_chunk_s: float = 1.0
    """At the start of an episode, wait up to this long for the first chunk before moving
    (0: start on the fallback at once)."""

    def __post_init__(self):
        if self.execute_horizon is not None and self.execute_horizon < 1:
            raise ValueError(f"execute_horizon must be >= 1, got {self.execute_horizon}")
        if (self.lead is not None and self.lead < 0) or self.blend_steps < 0:
            raise ValueError(
                f"lead and blend_steps must be >= 0, got {self.lead} and {self.blend_steps}"
            )
        if self.control_hz is not None and not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.delay_window < 1 or not 0 < self.delay_quantile <= 1:
            raise ValueError(
                f"need delay_window >= 1 and 0 < delay_quantile <= 1, got {self.delay_window} "
                f"and {self.delay_quantile}"
            )


class ChunkRuntime:
    """Turns a stream of observations into one action per control step (see module doc).

    Call :meth:`step` once per control tick with the current observation dict; it never
    blocks on the network."""

    def __init__(
        self,
        link: PolicyLink,
        fallback: Fallback,
        config: RuntimeConfig = RuntimeConfig(),
        horizon: int | None = None,
    ):
        self.link = link
        self.fallback = fallback
        self.config = config
        self._horizon = horizon
        self.log = ExecutionLog()
        self.latencies_ms: list[float] = []
        self.server_ms: list[float] = []
        """Server-side time (queue + inference, ``server_timing``) of every usable chunk."""
        self._round_trips: collections.deque[float] = collections.deque(maxlen=config.delay_window)
        self._delay_steps = 1  # nothing measured yet: the next step
        self.counts = {
            "chunks": 0,
            "stale": 0,
            "errors": 0,
            "deadline_misses": 0,
            "late_steps": 0,
            "realtime_requests": 0,
        }
        self.errors: list[dict[str, str]] = []
        self.new_episode("")

    def new_episode(self, task: str) -> ExecutionLog:
        """Start a new episode (clears the plan; a reply in flight is dropped as stale). The
        delay estimate carries over: it is the link's, not the episode's."""
        self.log = ExecutionLog(task=task)
        self._t = 0
        self._epoch = getattr(self, "_epoch", 0) + 1
        self._chunk: np.ndarray | None = None
        self._chunk_t0 = 0
        self._chunk_arrival = 0
        self._chunk_latency = float("nan")
        self._prev: tuple[np.ndarray, int] | None = None
        self._switch_t = -(10**9)
        self._last_action: np.ndarray | None = None
        self._inflight: int | None = None
        self._on_policy = False
        self._start = time.monotonic()
        return self.log

    @property
    def execute_horizon(self) -> int:
        if self.config.execute_horizon is not None:
            return self.config.execute_horizon
        if self._horizon is not None:
            return self._horizon
        meta = self.link.metadata or {}
        return int(meta.get("execute_horizon") or meta.get("action_horizon", 1))

    @property
    def realtime(self) -> dict[str, Any] | None:
        """The server's real-time chunking announcement when this runtime uses it."""
        rt = (self.link.metadata or {}).get("realtime")
        if self.config.realtime is False:
            return None
        if self.config.realtime and not rt:
            raise RuntimeError(
                "RuntimeConfig.realtime=True but the policy server does not announce real-time "
                "chunking (its metadata has no 'realtime'); serve a flow policy (vla or "
                "mlp-flow) or set realtime=None"
            )
        return rt or None

    @property
    def control_hz(self) -> float:
        if self.config.control_hz is not None:
            return self.config.control_hz
        return float((self.link.metadata or {}).get("control_hz") or 10.0)

    @property
    def delay_steps(self) -> int:
        """Estimated control steps from sending a request to using its chunk: the
        ``delay_quantile`` of the last round trips, rounded up, at least 1 (a chunk is used
        from the step after its request). Re-estimated when a reply arrives."""
        return self._delay_steps

    def _estimate_delay(self, round_trip_s: float) -> None:
        self._round_trips.append(round_trip_s)
        q = float(np.quantile(np.asarray(self._round_trips), self.config.delay_quantile))
        self._delay_steps = max(1, math.ceil(q * self.control_hz - 1e-9))

    @property
    def lead(self) -> int:
        return self.config.lead if self.config.lead is not None else self.delay_steps - 1

    def _tag(self, t: int) -> int:
        # tags carry the episode so a reply to the previous episode is recognised as stale
        return self._epoch * 1_000_000 + t

    def _take_reply(self) -> bool:
        reply = self.link.poll()
        if reply is None:
            return False
        self._inflight = None
        if reply.actions is None:
            self.counts["errors"] += 1
            self.errors.append(reply.error or {})
            return False
        self._estimate_delay(reply.latency_s)
        epoch, t0 = divmod(reply.tag, 1_000_000)
        offset = self._t - t0
        if epoch != self._epoch or offset >= len(reply.actions):
            self.counts["stale"] += 1
            return False
        self.latencies_ms.append(reply.latency_s * 1e3)
        srv = reply.server_timing
        if srv:
            self.server_ms.append(float(srv.get("infer_ms", 0.0)) + float(srv.get("queue_ms", 0.0)))
        if self._chunk is not None:
            self._prev = (self._chunk, self._chunk_t0)
        else:
            self._prev = None
        self._chunk, self._chunk_t0, self._chunk_arrival = reply.actions, t0, offset
        self._chunk_latency = reply.latency_s * 1e3
        self._switch_t = self._t
        self.counts["chunks"] += 1
        return True

    def _planned(self) -> np.ndarray | None:
        """The current chunk's action for this step, while it has one (a late next chunk
        leaves the robot on the rest of this one)."""
        if self._chunk is None:
            return None
        i = self._t - self._chunk_t0
        if 0 <= i < len(self._chunk):
            # the next chunk was due (asked `lead` steps before the execute horizon ends, or
            # at once when the delay is longer) and has not come
            if i >= max(self._chunk_arrival + self.delay_steps, self.execute_horizon):
                self.counts["late_steps"] += 1
            return self._chunk[i]
        return None

    def _old_plan(self) -> np.ndarray | None:
        if self._prev is not None:
            chunk, t0 = self._prev
            i = self._t - t0
            if 0 <= i < len(chunk):
                return chunk[i]
        return self._last_action

    def step(self, obs: dict[str, Any], override: np.ndarray | None = None) -> np.ndarray:
        """The action for this control step; ``override`` (e.g. a human's) wins and is
        recorded as an intervention."""
        cfg = self.config
        if self._t == 0 and self._chunk is None and cfg.wait_first_chunk_s > 0:
            self._wait_first_chunk(obs)
        new_chunk = self._take_reply()
        planned = self._planned()
        gap = float("nan")
        if new_chunk and planned is not None and self._prev is not None:
            chunk, t0 = self._prev
            if 0 <= self._t - t0 < len(chunk):
                gap = float(np.linalg.norm(np.asarray(planned) - chunk[self._t - t0]))
        realtime = self.realtime
        # a switch of who acts: a new chunk took over, or the fallback did
        boundary = new_chunk or (planned is None and self._on_policy)
        if override is not None:
            action, intervention = np.asarray(override, np.float32), True
        elif planned is not None:
            action, intervention = np.asarray(planned, np.float32), False
            k = self._t - self._switch_t
            old = self._old_plan()
            if realtime is None and k < cfg.blend_steps and old is not None:
                w = (k + 1) / (cfg.blend_steps + 1)
                action = ((1 - w) * old + w * action).astype(np.float32)
        else:
            if self._on_policy:
                self.counts["deadline_misses"] += 1
            action, intervention = np.asarray(self.fallback(obs), np.float32), True
        self._on_policy = planned is not None
        # ask early: while `lead` actions of this chunk's execute horizon remain, the next
        # one is computed
        remaining = (
            min(self.execute_horizon, len(self._chunk)) - (self._t - self._chunk_t0) - 1
            if planned is not None
            else 0
        )
        if self._inflight is None and remaining <= self.lead:
            request = obs
            if realtime is not None:
                request = self._with_plan(obs, realtime, planned is not None and override is None)
            if self.link.request(request, self._tag(self._t)):
                self._inflight = self._t
                self.counts["realtime_requests"] += realtime is not None
        self._record(obs, action, intervention, boundary)
        self.log.switch_gap.append(gap)
        self._last_action = action
        self._t += 1
        return action

    def _with_plan(self, obs: dict[str, Any], realtime: dict[str, Any], on_plan: bool):
        """``obs`` plus the committed plan: the current chunk's actions from this step on
        (what the robot executes while the next chunk is computed; none when the fallback or
        a person acts) and the expected delay in steps."""
        rest = (
            self._chunk[self._t - self._chunk_t0 :]
            if on_plan
            else np.zeros((0, len(self._chunk[0]) if self._chunk is not None else 0))
        )
        return {
            **obs,
            realtime["prefix_field"]: np.asarray(rest, np.float32),
            realtime["delay_field"]: int(self.delay_steps),
        }

    def _wait_first_chunk(self, obs: dict[str, Any]) -> None:
        """Before the first step of an episode: ask for a chunk and wait (bounded) for it, so
        an episode does not start on the fallback only because nothing was asked yet."""
        deadline = time.monotonic() + self.config.wait_first_chunk_s
        while self._chunk is None and time.monotonic() < deadline:
            if not self.link.busy:
                self._take_reply()  # a reply from a previous episode is dropped as stale
                if self._chunk is None and self.link.request(obs, self._tag(0)):
                    self._inflight = 0
            time.sleep(0.001)
        self._start = time.monotonic()

    def _record(self, obs, action, intervention, boundary) -> None:
        lg = self.log
        lg.timestamp.append(time.monotonic() - self._start)
        lg.state.append(np.asarray(obs.get(self.config.state_key, np.zeros(0)), np.float32))
        lg.action.append(action)
        lg.intervention.append(bool(intervention))
        lg.latency_ms.append(float("nan") if intervention else self._chunk_latency)
        lg.boundary.append(bool(boundary))
        if self.config.image_key is not None:
            lg.images.append(np.asarray(obs[self.config.image_key], np.uint8))


# ----------------------------------------------------------------------------- metrics


def jerk(actions: np.ndarray, control_hz: float) -> np.ndarray:
    """Per-step jerk of velocity commands: ``|a_t - 2 a_{t-1} + a_{t-2}| * hz^2`` ([T], the
    first two steps 0). Actions are velocities, so their second difference is the jerk."""
    a = np.asarray(actions, np.float64)
    out = np.zeros(len(a))
    if len(a) >= 3:
        out[2:] = np.linalg.norm(a[2:] - 2 * a[1:-1] + a[:-2], axis=-1) * control_hz**2
    return out


def boundary_jerk(log_: ExecutionLog, control_hz: float) -> tuple[list[float], list[float]]:
    """Jerk at chunk boundaries (the step a chunk or the fallback took over and the next one,
    the two second differences that straddle the switch) and everywhere else."""
    arr = log_.arrays()
    if len(log_) < 3:
        return [], []
    j = jerk(arr["action"], control_hz)
    at = np.zeros(len(j), bool)
    for t in np.flatnonzero(arr["boundary"]):
        at[t : t + 2] = True
    at[:2] = False
    valid = np.arange(len(j)) >= 2
    return j[at & valid].tolist(), j[~at & valid].tolist()


def percentiles(values: list[float], qs=(50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    return {f"p{q}": float(np.percentile(values, q)) for q in qs}
