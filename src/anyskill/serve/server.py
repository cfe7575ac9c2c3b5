"""Websocket policy server, wire-compatible with openpi's policy server and client.

Protocol (see ``docs/serving.md``): on connect the server sends one binary frame, the
policy's metadata; then every binary frame from the client is one observation dict and gets
exactly one reply, in order: a binary frame ``{"actions": [H, A] float32, "server_timing":
{...}, "batch_size": n}`` (plus ``"subtask": str`` from a hierarchical policy, one with
``infer_subtasks``; openpi clients ignore it, and may send it back as the optional request
field ``subtask`` to continue the policy's hysteresis) or, when the request is bad, a text
frame naming the field (the connection stays open). ``GET /healthz`` answers 200 ``OK`` (503 while shutting down).

Inside, every connection's handler decodes and validates its request on the event loop (cheap:
the decoder stops after ``max_items`` msgpack objects, so no frame can stall the loop) and
hands it to one *batcher* task, which gathers requests for up to ``batch_wait_ms`` (or
until ``max_batch``, or until every open connection has a request waiting) and runs one
``policy.infer(batch)`` on a dedicated worker thread, so the event loop keeps accepting,
validating and answering health checks while the forward pass runs. While one batch is in
the worker, the next one accumulates in the queue. One bad row never fails the others: a
row whose actions are not finite gets its own error reply, and a batch whose forward pass
raises is retried row by row.

What one client can cost the others is bounded by :class:`ServerConfig`: frame size
(``max_request_bytes``, ``hard_limit_bytes``), decode work (``max_items``), connections
(``max_connections``), bytes of requests held at once (``max_buffered_bytes``) and idle time
(``idle_timeout_s``, ``handshake_timeout_s``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import http
import logging
import socket
import threading
import time
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve

from anyskill.policies.base import ObservationError, Policy, PolicySpec
from anyskill.serve import wire

log = logging.getLogger("anyskill.serve")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the policy server listens and batches."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback by default. Use 0.0.0.0 to accept other machines."""
    port: int = 8000
    """TCP port; 0 picks a free one (printed on start)."""
    max_batch: int = 16
    """Most requests merged into one forward pass; 1 turns batching off."""
    batch_wait_ms: float = 2.0
    """Longest a request waits for others to join its batch (not waited when every open
    connection already has a request queued)."""
    max_request_bytes: int = 4 << 20
    """Largest request frame answered; larger ones get a ``too_large`` error reply."""
    hard_limit_bytes: int = 16 << 20
    """Frames above this are not even read: the connection is closed (code 1009)."""
    max_queue: int = 256
    """Requests waiting for inference beyond which new ones get an ``overloaded`` reply."""
    max_items: int = 1 << 14
    """Most msgpack arrays, maps and their elements decoded from one request (a numpy array
    counts as one); beyond it the decoder stops and the request gets a ``bad_frame`` reply.
    Bounds the event loop's work per frame (send images as numpy arrays, not nested lists)."""
    max_connections: int = 64
    """Open websocket connections beyond which new ones are refused (HTTP 503)."""
    max_buffered_bytes: int = 256 << 20
    """Memory budget: bytes of request frames held at once across all connections (received,
    not yet answered). A frame that would exceed it gets an ``overloaded`` reply and is
    dropped. Request memory stays below this plus ``max_connections`` x 2 x
    ``hard_limit_bytes`` (each connection buffers at most one further frame)."""
    idle_timeout_s: float = 60.0
    """Close a connection (code 1001) that completes no request frame for this long; also
    ends slow senders that trickle a frame in. 0: never."""
    error_delay_ms: float = 10.0
    """After an error reply, wait this long before reading the connection's next frame,
    doubling with each further error in a row up to 1 s (a good request resets it): a
    client that keeps sending bad frames gets only a small share of the server. 0: off."""
    handshake_timeout_s: float = 10.0
    """Drop a TCP connection that has not finished its opening (or closing) websocket
    handshake in this time."""

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (1 = no batching), got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 < self.max_request_bytes <= self.hard_limit_bytes:
            raise ValueError(
                f"need 0 < max_request_bytes <= hard_limit_bytes, got {self.max_request_bytes} "
                f"and {self.hard_limit_bytes}"
            )
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_queue", "max_items", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_buffered_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be >= max_request_bytes "
                f"({self.max_request_bytes}), or no request of the largest size is ever answered"
            )
        if self.error_delay_ms < 0:
            raise ValueError(f"error_delay_ms must be >= 0 (0: off), got {self.error_delay_ms}")
        if self.idle_timeout_s < 0 or self.handshake_timeout_s <= 0:
            raise ValueError(
                f"need idle_timeout_s >= 0 and handshake_timeout_s > 0, got "
                f"{self.idle_timeout_s} and {self.handshake_timeout_s}"
            )


class ListenError(ValueError):
    """The server cannot listen on its host and port (in use, not an address of this host)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a :class:`ListenError` saying what to do.
    Bound before a slow policy load or warm-up, so a port in use is reported at once."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ListenError(
                f"port {port} on {host} is already in use; pick another with --port or stop "
                "the process holding it"
            ) from None
        raise ListenError(
            f"cannot listen on {host}:{port}: {e.strerror or e} (check --host and --port)"
        ) from None
    sock.setblocking(False)
    return sock


@dataclasses.dataclass
class ServerStats:
    """Counters (read them from any thread; they are only written by the event loop)."""

    connections: int = 0
    requests: int = 0
    replies: int = 0
    errors: int = 0
    infer_calls: int = 0
    batch_sizes: list[int] = dataclasses.field(default_factory=list)


class RequestError(Exception):
    """A request that gets an error reply instead of actions."""

    def __init__(self, kind: str, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.kind, self.field, self.message = kind, field, message


@dataclasses.dataclass
class _Pending:
    obs: dict[str, Any]
    future: asyncio.Future
    enqueued: float


class PolicyServer:
    """Serves one :class:`Policy` to many websocket clients (see module docstring)."""

    def __init__(
        self,
        policy: Policy,
        config: ServerConfig = ServerConfig(),
        sock: socket.socket | None = None,
        episode_sink: Any = None,
    ):
        """``sock``: an already listening socket (from :func:`bind`) instead of binding
        ``config.host:config.port`` when serving starts. ``episode_sink``: an
        :class:`anyskill.serve.episodes.EpisodeSink` that takes the episodes robots upload on
        ``/episodes`` (None: that path is refused)."""
        # the server calls only ``spec`` and ``infer`` (a Policy's ``act`` is for rollouts)
        if not (
            isinstance(getattr(policy, "spec", None), PolicySpec)
            and callable(getattr(policy, "infer", None))
        ):
            raise TypeError(
                f"policy must implement anyskill.policies.base.Policy (a PolicySpec `spec` and "
                f"`infer`), got {policy!r}"
            )
        self.policy = policy
        self.config = config
        self.stats = ServerStats()
        spec = policy.spec
        self.metadata = {
            **spec.metadata(),
            "server": "anyskill",
            "max_batch": config.max_batch,
            "max_request_bytes": config.max_request_bytes,
        }
        self._metadata_frame = wire.pack(self.metadata)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._draining = False
        self._open = 0
        self._held_bytes = 0
        self._sock = sock
        self.port: int | None = None
        self.episode_sink = episode_sink
        # episodes are written on their own thread: a store write never delays inference
        self._store_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store")

    # --------------------------------------------------------------------- lifecycle

    def warmup(self) -> None:
        """Compile the policy for every batch size it will see (if it knows how)."""
        warm = getattr(self.policy, "warmup", None)
        if callable(warm):
            warm(self.config.max_batch)

    async def serve(self, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None):
        """Run until ``stop`` is set (forever without one), then shut down gracefully: stop
        accepting, answer what is queued, close connections with 1001 (going away)."""
        cfg = self.config
        sock = self._sock if self._sock is not None else bind(cfg.host, cfg.port)
        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batch_loop(), name="batcher")
        async with serve(
            self._handle,
            sock=sock,
            compression=None,
            max_size=cfg.hard_limit_bytes,
            max_queue=1,  # one request answered at a time: buffer at most one more frame
            open_timeout=cfg.handshake_timeout_s,
            close_timeout=cfg.handshake_timeout_s,
            process_request=self._http,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving %s on ws://%s:%d", self.policy.spec.name, cfg.host, self.port)
            if ready is not None:
                ready.set()
            await (stop.wait() if stop is not None else asyncio.Future())
            self._draining = True
            server.server.close()  # stop accepting (the asyncio listener)
            deadline = time.monotonic() + 5.0
            while not self._queue.empty() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            server.close(close_connections=True)
            await server.wait_closed()
        batcher.cancel()
        self._executor.shutdown(wait=True)
        self._store_executor.shutdown(wait=True)
        log.info("server stopped")

    async def start(self, stop: asyncio.Event) -> asyncio.Task:
        """Serve in a task until ``stop`` is set; returns the task once the server listens,
        or raises what kept it from listening (never waits forever on a failed start)."""
        ready = asyncio.Event()
        task = asyncio.create_task(self.serve(ready, stop))
        listening = asyncio.create_task(ready.wait())
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            listening.cancel()
            await task  # raises serve()'s error
        return task

    # --------------------------------------------------------------------- http + ws

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            if self._draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._open >= self.config.max_connections:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"{self._open} connections open, the server's max_connections; retry later\n",
            )
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        from anyskill.serve import episodes

        if ws.request is not None and ws.request.path == episodes.PATH:
            return await self._handle_episodes(ws)
        self.stats.connections += 1
        self._open += 1
        prev_total_ms: float | None = None
        errors_in_row = 0
        try:
            await ws.send(self._metadata_frame)
            while (frame := await self._next_frame(ws)) is not None:
                start = time.perf_counter()
                self.stats.requests += 1
                try:
                    with self._holding(len(frame)):
                        actions, timing, batch, subtask = await self._answer(frame)
                except RequestError as e:
                    self.stats.errors += 1
                    await ws.send(wire.error_text(e.kind, e.field, e.message))
                    errors_in_row += 1
                    with contextlib.suppress(TimeoutError):  # or until the connection closes
                        await asyncio.wait_for(ws.wait_closed(), self._error_delay_s(errors_in_row))
                    continue
                errors_in_row = 0
                timing = {**timing, "total_ms": (time.perf_counter() - start) * 1e3}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply = {"actions": actions, "server_timing": timing, "batch_size": batch}
                if subtask is not None:  # a hierarchical policy's current subtask (issue 27)
                    reply["subtask"] = subtask
                await ws.send(wire.pack(reply))
                self.stats.replies += 1
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except websockets.ConnectionClosed:
            pass
        except Exception:  # a bug in the server: log it here, never send it to the client
            log.exception("connection %s failed", ws.remote_address)
        finally:
            self._open -= 1

    async def _handle_episodes(self, ws: ServerConnection) -> None:
        """The upload channel (:mod:`anyskill.serve.episodes`): one finished episode per
        frame, each answered once it is durable in the store, or with an error naming the
        field."""
        from anyskill.serve.episodes import EpisodeRejected

        sink = self.episode_sink
        if sink is None:
            await ws.close(1008, "this server takes no episode uploads (not a flywheel round)")
            return
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            await ws.send(wire.pack(sink.hello()))
            while (frame := await self._next_frame(ws)) is not None:
                try:
                    if isinstance(frame, str):
                        raise EpisodeRejected("<frame>", "episodes travel as binary msgpack")
                    try:
                        msg = wire.unpack(frame, max_items=self.config.max_items)
                    except wire.WireError as e:
                        raise EpisodeRejected("<frame>", str(e)) from None
                    episode = sink.check(msg)
                except EpisodeRejected as e:
                    await ws.send(wire.error_text("bad_episode", e.field, e.message))
                    continue
                try:
                    index = await loop.run_in_executor(self._store_executor, sink.store, episode)
                except Exception as e:  # disk full, read-only store: the robot keeps its copy
                    log.exception("storing an uploaded episode failed")
                    await ws.send(
                        wire.error_text("store_failed", "<store>", f"{type(e).__name__}: {e}")
                    )
                    continue
                await ws.send(wire.pack({"stored": index}))
        except websockets.ConnectionClosed:
            pass
        except Exception:  # a bug or a failed write: log it, never send it to the robot
            log.exception("episode upload from %s failed", ws.remote_address)
        finally:
            self._open -= 1

    async def _next_frame(self, ws: ServerConnection) -> bytes | str | None:
        """The next request frame, or None once the connection is closed or idle too long."""
        idle = self.config.idle_timeout_s or None
        try:
            async with asyncio.timeout(idle):
                return await ws.recv()
        except websockets.ConnectionClosed:
            return None
        except TimeoutError:
            await ws.close(1001, f"idle for {idle:g} s (the server's idle_timeout_s)")
            return None

    def _error_delay_s(self, errors_in_row: int) -> float:
        """Pause before reading the next frame of a connection after its n-th error in a row
        (a tarpit: the abuser waits, not the server)."""
        base = self.config.error_delay_ms / 1e3
        return min(base * 2.0 ** min(errors_in_row - 1, 30), max(base, 1.0))

    @contextlib.contextmanager
    def _holding(self, size: int):
        """Count ``size`` bytes against ``max_buffered_bytes`` while a request is answered."""
        budget = self.config.max_buffered_bytes
        if self._held_bytes + size > budget:
            raise RequestError(
                "overloaded",
                "<server>",
                f"{self._held_bytes + size} bytes of requests would be held, more than the "
                f"server's max_buffered_bytes {budget}; retry later",
            )
        self._held_bytes += size
        try:
            yield
        finally:
            self._held_bytes -= size

    def parse_request(self, frame: bytes | str) -> dict[str, Any]:
        """A request frame as a validated observation, or the :class:`RequestError` its
        reply names. Bounded work whatever the frame holds."""
        cfg = self.config
        if isinstance(frame, str):
            raise RequestError(
                "bad_frame", "<frame>", "expected a binary msgpack frame, got a text frame"
            )
        if len(frame) > cfg.max_request_bytes:
            raise RequestError(
                "too_large",
                "<frame>",
                f"{len(frame)} bytes, more than the server's max_request_bytes "
                f"{cfg.max_request_bytes}",
            )
        try:
            obs = wire.unpack(frame, max_items=cfg.max_items)
        except wire.WireError as e:
            raise RequestError("bad_frame", "<frame>", str(e)) from None
        try:
            return self.policy.spec.validate(obs)
        except ObservationError as e:
            raise RequestError("invalid_observation", e.field, str(e)) from None

    async def _answer(
        self, frame: bytes | str
    ) -> tuple[np.ndarray, dict[str, float], int, str | None]:
        cfg = self.config
        obs = self.parse_request(frame)
        if self._draining:
            raise RequestError("overloaded", "<server>", "the server is shutting down")
        if self._queue.qsize() >= cfg.max_queue:
            raise RequestError("overloaded", "<server>", f"{cfg.max_queue} requests queued")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(obs, future, time.perf_counter()))
        return await future

    # --------------------------------------------------------------------- batching

    async def _collect(self) -> list[_Pending]:
        cfg = self.config
        queue = self._queue
        items = [await queue.get()]
        deadline = time.perf_counter() + cfg.batch_wait_ms / 1e3
        while len(items) < cfg.max_batch:
            if not queue.empty():
                items.append(queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            # nobody else can join: every open connection already has a request here
            if left <= 0 or len(items) >= self._open:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return items

    async def _batch_loop(self) -> None:
        while True:
            items = [p for p in await self._collect() if not p.future.done()]
            if not items:
                continue
            start = time.perf_counter()
            rows = await self._infer_rows([p.obs for p in items])
            done = time.perf_counter()
            self.stats.infer_calls += 1
            self.stats.batch_sizes.append(len(items))
            for p, row in zip(items, rows, strict=True):
                if p.future.done():  # the client went away meanwhile
                    continue
                if isinstance(row, RequestError):
                    p.future.set_exception(row)
                    continue
                timing = {
                    "infer_ms": (done - start) * 1e3,
                    "queue_ms": (start - p.enqueued) * 1e3,
                }
                actions, subtask = row
                p.future.set_result((actions, timing, len(items), subtask))

    async def _infer_rows(
        self, batch: list[dict[str, Any]]
    ) -> list[tuple[np.ndarray, str | None] | RequestError]:
        """Each row's ``([H, A] chunk, subtask text or None)``, or the error that row's reply
        carries. A row with
        non-finite actions fails alone; a batch whose forward pass raises is retried row by
        row, so one observation the policy cannot handle never fails the others."""
        try:
            actions, subtasks = await self._infer(batch)
        except Exception as e:
            if len(batch) > 1:
                log.warning("policy.infer failed on a batch of %d; retrying row by row", len(batch))
                return [row for obs in batch for row in await self._infer_rows([obs])]
            log.exception("policy.infer failed")
            return [
                RequestError("policy_failed", "<policy>", f"inference failed ({type(e).__name__})")
            ]
        finite = np.isfinite(actions).all(axis=(1, 2))
        if not finite.all():
            log.error("policy.infer returned NaN or infinite actions for %d rows", (~finite).sum())
        subtasks = subtasks or [None] * len(actions)
        return [
            (row, sub) if ok else RequestError("policy_failed", "<policy>", "non-finite actions")
            for row, sub, ok in zip(actions, subtasks, finite, strict=True)
        ]

    async def _infer(self, batch: list[dict[str, Any]]) -> tuple[np.ndarray, list | None]:
        """One forward pass on the worker thread, checked for shape; with the subtask text
        per row when the policy offers ``infer_subtasks`` (a hierarchical policy: ``(chunks,
        texts or None)``), else None."""
        spec = self.policy.spec
        hierarchical = callable(getattr(self.policy, "infer_subtasks", None))
        out = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.policy.infer_subtasks if hierarchical else self.policy.infer, batch
        )
        subtasks = None
        if hierarchical:
            out, subtasks = out
            if subtasks is not None:
                subtasks = [None if t is None else str(t) for t in subtasks]
                if len(subtasks) != len(batch):
                    raise ValueError(f"{len(subtasks)} subtasks for a batch of {len(batch)}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf rows
            actions = np.asarray(out, np.float32)
        want = (len(batch), spec.action_horizon, spec.action_dim)
        if actions.shape != want:
            raise ValueError(f"infer returned shape {actions.shape}, expected {want}")
        return actions, subtasks


class ServerThread:
    """A server on a background thread (tests, benchmarks, notebooks)::

    with ServerThread(policy, ServerConfig(port=0)) as srv:
        url = srv.url
    """

    def __init__(
        self, policy: Policy, config: ServerConfig = ServerConfig(port=0), episode_sink=None
    ):
        self.server = PolicyServer(policy, config, episode_sink=episode_sink)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            task = await self.server.start(self._stop)
            self._ready.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    def start(self) -> ServerThread:
        self.server.warmup()
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"policy server failed to start: {self._error}") from self._error
        return self

    @property
    def url(self) -> str:
        return f"ws://{self.server.config.host}:{self.server.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_server(policy: Policy, config: ServerConfig, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (``anyskill serve``). ``sock``:
    the listening socket, bound by the caller before loading the policy (see :func:`bind`)."""
    import signal

    sock = sock if sock is not None else bind(config.host, config.port)
    server = PolicyServer(policy, config, sock)
    server.warmup()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = await server.start(stop)
        print(
            f"serving {policy.spec.name} on ws://{config.host}:{server.port} "
            f"(max_batch {config.max_batch}, health: http://{config.host}:{server.port}/healthz)",
            flush=True,
        )
        await task

    asyncio.run(main())
