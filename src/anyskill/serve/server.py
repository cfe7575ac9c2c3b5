"""Websocket policy server, wire-compatible with openpi's policy server and client.

Protocol (see ``docs/serving.md``): on connect the server sends one binary frame, the
policy's metadata; then every binary frame from the client is one observation dict and gets
exactly one reply, in order: a binary frame ``{"actions": [H, A] float32, "server_timing":
{...}, "batch_size": n}`` or, when the request is bad, a text frame naming the field (the
connection stays open). ``GET /healthz`` answers 200 ``OK`` (503 while shutting down).

Inside, every connection's handler decodes and validates its request on the event loop (cheap)
and hands it to one *batcher* task, which gathers requests for up to ``batch_wait_ms`` (or
until ``max_batch``, or until every open connection has a request waiting) and runs one
``policy.infer(batch)`` on a dedicated worker thread, so the event loop keeps accepting,
validating and answering health checks while the forward pass runs. While one batch is in
the worker, the next one accumulates in the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import http
import logging
import threading
import time
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import Request, Response, ServerConnection, serve

from anyskill.policies.base import ObservationError, Policy
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

    def __init__(self, policy: Policy, config: ServerConfig = ServerConfig()):
        if not isinstance(policy, Policy):
            raise TypeError(f"policy must implement anyskill.policies.base.Policy, got {policy!r}")
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
        self.port: int | None = None

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
        self._queue = asyncio.Queue()
        batcher = asyncio.create_task(self._batch_loop(), name="batcher")
        async with serve(
            self._handle,
            cfg.host,
            cfg.port,
            compression=None,
            max_size=cfg.hard_limit_bytes,
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
        log.info("server stopped")

    # --------------------------------------------------------------------- http + ws

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            if self._draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self._open += 1
        prev_total_ms: float | None = None
        try:
            await ws.send(self._metadata_frame)
            async for frame in ws:
                start = time.perf_counter()
                self.stats.requests += 1
                try:
                    actions, timing, batch = await self._answer(frame)
                except RequestError as e:
                    self.stats.errors += 1
                    await ws.send(wire.error_text(e.kind, e.field, e.message))
                    continue
                timing = {**timing, "total_ms": (time.perf_counter() - start) * 1e3}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply = {"actions": actions, "server_timing": timing, "batch_size": batch}
                await ws.send(wire.pack(reply))
                self.stats.replies += 1
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except websockets.ConnectionClosed:
            pass
        except Exception:  # a bug in the server: log it here, never send it to the client
            log.exception("connection %s failed", ws.remote_address)
        finally:
            self._open -= 1

    async def _answer(self, frame: bytes | str) -> tuple[np.ndarray, dict[str, float], int]:
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
            obs = wire.unpack(frame)
        except wire.WireError as e:
            raise RequestError("bad_frame", "<frame>", str(e)) from None
        try:
            obs = self.policy.spec.validate(obs)
        except ObservationError as e:
            raise RequestError("invalid_observation", e.field, str(e)) from None
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
        loop = asyncio.get_running_loop()
        spec = self.policy.spec
        while True:
            items = [p for p in await self._collect() if not p.future.done()]
            if not items:
                continue
            start = time.perf_counter()
            try:
                actions = await loop.run_in_executor(
                    self._executor, self.policy.infer, [p.obs for p in items]
                )
                actions = np.asarray(actions, np.float32)
                want = (len(items), spec.action_horizon, spec.action_dim)
                if actions.shape != want:
                    raise ValueError(f"infer returned shape {actions.shape}, expected {want}")
                if not np.all(np.isfinite(actions)):
                    raise ValueError("infer returned NaN or infinite actions")
                failure = None
            except Exception as e:
                log.exception("policy.infer failed on a batch of %d", len(items))
                failure = RequestError(
                    "policy_failed", "<policy>", f"inference failed ({type(e).__name__})"
                )
            done = time.perf_counter()
            self.stats.infer_calls += 1
            self.stats.batch_sizes.append(len(items))
            for i, p in enumerate(items):
                if p.future.done():  # the client went away meanwhile
                    continue
                if failure is not None:
                    p.future.set_exception(failure)
                    continue
                timing = {
                    "infer_ms": (done - start) * 1e3,
                    "queue_ms": (start - p.enqueued) * 1e3,
                }
                p.future.set_result((actions[i], timing, len(items)))


class ServerThread:
    """A server on a background thread (tests, benchmarks, notebooks)::

    with ServerThread(policy, ServerConfig(port=0)) as srv:
        url = srv.url
    """

    def __init__(self, policy: Policy, config: ServerConfig = ServerConfig(port=0)):
        self.server = PolicyServer(policy, config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="policy-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(self.server.serve(ready, self._stop))
            await ready.wait()
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


def run_server(policy: Policy, config: ServerConfig) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully (``anyskill serve``)."""
    import signal

    server = PolicyServer(policy, config)
    server.warmup()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()
        task = asyncio.create_task(server.serve(ready, stop))
        await ready.wait()
        print(
            f"serving {policy.spec.name} on ws://{config.host}:{server.port} "
            f"(max_batch {config.max_batch}, health: http://{config.host}:{server.port}/healthz)",
            flush=True,
        )
        await task

    asyncio.run(main())
