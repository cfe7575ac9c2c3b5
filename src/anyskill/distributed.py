"""Several processes (hosts) running one JAX program: ``jax.distributed`` made safe to call.

Multi-controller JAX runs the *same* Python program in every process. After
:func:`initialize`, ``jax.devices()`` lists the devices of every process, a ``Mesh`` over them
spans the hosts, and one ``jit`` compiles to one SPMD program whose collectives (the gradient
all-reduce of a data-parallel learner) cross the network. Every process must therefore run
the same command with the same config, except ``process_id`` (0, 1, ..., num_processes - 1):
a process that runs other code, or the same code with other shapes, deadlocks the others in a
collective.

What crosses the network:

* **the coordinator** — a gRPC service that process 0 starts on ``coordinator`` ("host:port";
  it listens on ``bind_address``, by default that same address). Every process connects to
  it at start-up to exchange the device topology and keeps a heartbeat to it; a process
  that dies is noticed there and the others are stopped. Open this one TCP port on process 0
  to the other hosts.
* **the collectives** — on CPU, gloo over TCP: every pair of processes connects directly, on
  ports each process picks at start-up (ephemeral ports, advertised through the
  coordinator), at the address the host's own name resolves to (``getent hosts
  $(hostname)`` must print an address the other hosts can reach, not 127.0.1.1). So the
  hosts must accept TCP connections from each other on high ports. On GPUs NCCL carries
  the collectives instead.

Nothing is encrypted or authenticated: run this on a private network only. A single process
(``coordinator=None``, the default) initialises nothing and behaves exactly as before.

Files: only process 0 (:func:`is_leader`) writes a run directory; the other processes learn
what it read (a config, a checkpoint) through :func:`from_leader` and
:func:`broadcast_from_leader`, so the hosts need no shared file system.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import jax
import numpy as np

__all__ = [
    "DistributedConfig",
    "DistributedError",
    "broadcast_from_leader",
    "from_leader",
    "initialize",
    "is_leader",
    "to_host",
]

T = TypeVar("T")


class DistributedError(ValueError):
    """A multi-process job cannot start (or continue) as configured."""


def _check_address(field: str, value: str) -> None:
    """``value`` must be "host:port" with a port in 1..65535 ("[::1]:1234" for IPv6)."""
    host, sep, port = value.rpartition(":")
    ok = bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
    if not ok:
        raise ValueError(
            f"{field} must be 'host:port' with a port in 1..65535 (e.g. '10.0.0.1:1234', "
            f"'127.0.0.1:1234' on one machine), got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """One training program over several processes (hosts) with ``jax.distributed``.

    Start the same command on every host; only ``process_id`` differs."""

    coordinator: str | None = None
    """'host:port' of process 0's coordinator, the same on every process (e.g. 10.0.0.1:1234);
    none = this process trains alone and nothing is initialised."""
    num_processes: int = 1
    """Processes in the job, each started with its own --process-id."""
    process_id: int = 0
    """This process's rank, 0..num_processes-1; process 0 runs the coordinator and is the only
    one that writes the run directory."""
    bind_address: str | None = None
    """Where process 0's coordinator listens ('host:port'); none = the coordinator address
    itself (use '[::]:PORT' to listen on every interface)."""
    local_device_count: int | None = None
    """CPU devices this process exposes (sets jax_num_cpu_devices; for tests and CPU hosts,
    ignored on GPU/TPU); none = the platform's default."""
    cpu_collectives: Literal["gloo", "mpi"] = "gloo"
    """Cross-process collectives on CPU: gloo over TCP, or MPI (needs an MPI launcher)."""
    initialization_timeout: int = 300
    """Seconds a process waits for all the others to connect before it gives up."""

    def __post_init__(self):
        for name in ("num_processes", "initialization_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.process_id, bool) or not isinstance(self.process_id, int):
            raise ValueError(f"process_id must be an integer, got {self.process_id!r}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in 0..{self.num_processes - 1} (num_processes="
                f"{self.num_processes}), got {self.process_id}; number the processes "
                f"0, 1, ..., num_processes - 1"
            )
        if self.coordinator is None:
            if self.num_processes > 1:
                raise ValueError(
                    f"num_processes={self.num_processes} needs --coordinator HOST:PORT "
                    "(process 0's address, the same on every process)"
                )
            if self.bind_address is not None:
                raise ValueError(
                    f"bind_address={self.bind_address!r} is only used with --coordinator; "
                    "set both or neither"
                )
        else:
            _check_address("coordinator", self.coordinator)
        if self.bind_address is not None:
            _check_address("bind_address", self.bind_address)
        if self.local_device_count is not None and (
            isinstance(self.local_device_count, bool)
            or not isinstance(self.local_device_count, int)
            or self.local_device_count < 1
        ):
            raise ValueError(
                f"local_device_count must be an integer >= 1 or none, got "
                f"{self.local_device_count!r}"
            )

    @property
    def enabled(self) -> bool:
        """Whether this process joins a multi-process job (and so calls jax.distributed)."""
        return self.coordinator is not None


#: The config this process joined its job with (None: not joined).
_JOINED: DistributedConfig | None = None


def _backend_started() -> bool:
    """Whether JAX has created its devices (after which jax.distributed cannot start)."""
    try:  # the check jax.distributed.initialize makes itself; private, so guarded
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False  # then jax.distributed.initialize's own RuntimeError is reworded below


_STARTED_ALONE = (
    "JAX already started in single-process mode (something used its devices: a computation, "
    "jax.devices(), device_put, ...) before anyskill.distributed.initialize; call initialize "
    "first thing in the program, before any JAX work"
)


def initialize(cfg: DistributedConfig) -> bool:
    """Join the multi-process job ``cfg`` describes; returns whether this is a multi-process
    job. Call it before anything starts JAX's devices. A single-process config does nothing
    (beyond ``local_device_count``); calling it again with the same config does nothing."""
    global _JOINED
    if not cfg.enabled:
        if _JOINED is not None:
            raise DistributedError(
                f"this process already joined a {_JOINED.num_processes}-process job "
                f"(coordinator {_JOINED.coordinator}); a process cannot leave it to train alone"
            )
        _set_local_device_count(cfg)
        return False
    if _JOINED is not None:
        if _JOINED != cfg:
            raise DistributedError(
                f"this process already joined the job {_JOINED}; it cannot join another "
                f"({cfg}) — start a new process"
            )
        return True
    if _backend_started():
        raise DistributedError(_STARTED_ALONE)
    _set_local_device_count(cfg)
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    try:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator,
            num_processes=cfg.num_processes,
            process_id=cfg.process_id,
            # every argument is given: never let cluster auto-detection (SLURM, MPI, TPU
            # metadata) replace them
            cluster_detection_method="deactivate",
            initialization_timeout=cfg.initialization_timeout,
            coordinator_bind_address=cfg.bind_address or cfg.coordinator,
        )
    except RuntimeError as e:
        if "must be called before" in str(e):
            raise DistributedError(_STARTED_ALONE) from None
        raise DistributedError(
            f"process {cfg.process_id} of {cfg.num_processes} could not join the job at "
            f"{cfg.coordinator}: {' '.join(str(e).split())[:500]} — check that every process "
            f"was started with the same --coordinator and --num-processes, that process 0 "
            f"runs, and that its port is open to this host"
        ) from None
    _JOINED = cfg
    return True


def _set_local_device_count(cfg: DistributedConfig) -> None:
    n = cfg.local_device_count
    if n is None:
        return
    if not _backend_started():
        jax.config.update("jax_num_cpu_devices", n)
    elif jax.default_backend() == "cpu" and jax.local_device_count() != n:
        raise DistributedError(
            f"local_device_count={n}, but JAX already started with {jax.local_device_count()} "
            "CPU devices; set it before any JAX work (or leave it unset)"
        )


def is_leader() -> bool:
    """Whether this is process 0: the one that reads and writes files."""
    return jax.process_index() == 0


def from_leader(fn: Callable[[], T]) -> T:
    """``fn()`` run by process 0 only, its (JSON-able) result given to every process.

    If ``fn`` raises on process 0, process 0 raises it and every other process raises a
    :class:`DistributedError` with its message, so all stop together instead of waiting for
    process 0 in a collective. One process: just ``fn()``."""
    if jax.process_count() == 1:
        return fn()
    failure: BaseException | None = None
    payload: Any = None
    if is_leader():
        try:
            payload = {"ok": fn()}
        except Exception as e:  # given to the others, then raised here
            failure, payload = e, {"error": f"{type(e).__name__}: {e}"}
    reply = _broadcast_json(payload)
    if failure is not None:
        raise failure
    if "error" in reply:
        raise DistributedError(f"process 0 stopped: {reply['error']}")
    return reply["ok"]


def _broadcast_json(obj: Any) -> Any:
    """Process 0's ``obj`` (JSON-able) on every process."""
    from jax.experimental import multihost_utils

    data = json.dumps(obj).encode() if is_leader() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
    buf = np.zeros(size, np.uint8)
    if is_leader():
        buf[:] = np.frombuffer(data, np.uint8)
    buf = multihost_utils.broadcast_one_to_all(buf)
    return json.loads(np.asarray(buf).tobytes().decode())


def broadcast_from_leader(tree: T) -> T:
    """Process 0's values of a pytree of host arrays on every process (the others pass a
    template of the same shapes and dtypes, e.g. zeros). One process: ``tree`` itself."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)


def to_host(tree: T) -> T:
    """The full values of a pytree of (possibly cross-process) arrays as host arrays on every
    process — a collective: every process must call it. One process: ``tree`` itself (what
    :func:`jax.device_get` would fetch)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
