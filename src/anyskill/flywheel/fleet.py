"""The flywheel on a Ray cluster: deploy workers feed one learner, asynchronously.

``anyskill flywheel --cluster local`` (a Ray started here, node address 127.0.0.1) or ``--cluster
HOST:PORT`` (an existing cluster; docs/cluster.md). Three kinds of process::

    deploy worker i (Ray actor)         driver = learner (this process)        parameter server
    ───────────────────────────         ───────────────────────────────        (Ray actor)
    pull newest version ◄───────────────────────────────────────────────────── (version, weights)
    run envs_per_worker episodes                                                      ▲
    return them ──────────────────────► collector thread: crash-safe writer           │
    (next batch already queued)         into RUN/data, tagged fleet-vN / worker       │
                                        learner thread: value fn, advantages,         │
                                        publish_every updates ───── publish ──────────┘

- **Workers** are restartable actors (``max_restarts=-1``); each runs one vectorised
  deployment at a time and always has the next one queued, so collection never waits for
  the learner. Before each batch a worker asks the parameter server for a newer version; if
  the server does not answer within ``pull_timeout_s`` it keeps running the version it has
  and says so in the batch's result.
- **The store** is written only by the driver's collector thread (the one writer the
  episode store allows), one episode at a time through
  :class:`~anyskill.data.writer.EpisodeWriter`: an episode is in the store entirely or not
  at all, whatever is killed. Every episode records the policy version it ran
  (``policy_version="fleet-vN"``) and its worker (``episode_info``). Episodes travel from
  worker to driver through Ray's object store, so hosts need no shared filesystem.
- **The learner** trains on everything stored so far — the value function, the round's
  advantages, then ``publish_every`` updates of the deployed method (``--deploy-with``;
  off-policy: every frame carries the version that produced it, and the lag of each batch
  is logged) — saves the policy atomically with its version and publishes it. Killed, it
  resumes (``--resume``) from the last published version and the store.
- **Faults**: a worker killed mid-batch loses that batch only (its episodes were never
  returned); Ray restarts it and it resumes with the newest version.
- **Security**: Ray's token authentication stays on (``RAY_AUTH_MODE=token``; a run with it
  disabled is refused). ``--cluster local`` starts a Ray whose processes all listen on
  127.0.0.1 only (:data:`LOOPBACK_ONLY`); robot workers serve on ``--robots.host``,
  loopback by default (docs/cluster.md, Security).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anyskill import checkpoint, rundir
from anyskill.data.format import UNKNOWN_SUCCESS
from anyskill.flywheel.artifacts import LABELS, RunPaths
from anyskill.flywheel.config import FleetConfig, FlywheelConfig
from anyskill.flywheel.context import log

RAY_MISSING = (
    "--cluster needs Ray: pip install -e '.[cluster]' (the single-machine flywheel needs "
    "nothing more: leave --cluster out)"
)

#: the episode-store tag of a fleet episode's policy version
VERSION_TAG = "fleet-v{}"


#: Ray's switch for single-node mode (meant for macOS and Windows): off, every Ray process of
#: this machine takes 127.0.0.1 as the node address and listens there only. Ray turns an
#: explicit node address 127.0.0.1 into the machine's network address, so this is the one way
#: to keep a local Ray off the network. Read once, when Ray is imported.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def require_ray(local: bool = False):
    """``ray`` with token authentication on (see :func:`require_token_auth`; Ray reads the
    mode when it is imported), or an ImportError that says how to install it. ``local``:
    the Ray this process starts listens on loopback only (:data:`LOOPBACK_ONLY`)."""
    require_token_auth()
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_MISSING) from e
    return ray


def require_token_auth() -> None:
    """Refuse to run with Ray's token authentication turned off; turn it on when unset."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise ValueError(
            f"RAY_AUTH_MODE={mode}: anyskill keeps Ray's token authentication on (anyone who "
            "reaches an unauthenticated Ray can run code on it). Unset RAY_AUTH_MODE or set "
            "it to 'token', and give every node the same token (RAY_AUTH_TOKEN_PATH; "
            "docs/cluster.md)"
        )
    if "ray" not in sys.modules:  # Ray reads the mode once, when it is imported
        os.environ["RAY_AUTH_MODE"] = "token"


def loopback_only() -> bool:
    """Whether a Ray started by this process listens on loopback only."""
    import ray._private.ray_constants as rc

    return not rc.ENABLE_RAY_CLUSTER


def connect(cluster: str, fleet: FleetConfig) -> bool:
    """Join Ray (``cluster``: ``local`` starts one here listening on loopback only, else an
    address). Returns True when this call started Ray (the caller shuts it down). A Ray
    already initialised in this process (e.g. a test's own cluster) is used as it is."""
    ray = require_ray(local=cluster == "local")
    if cluster == "local" and not ray.is_initialized() and not loopback_only():
        log(
            f"fleet: Ray was imported before {LOOPBACK_ONLY}=0 could be set: this local Ray "
            "listens on the machine's network address too (token authentication still on)"
        )
    if ray.is_initialized():
        return False
    if cluster == "local":
        ray.init(
            num_cpus=fleet.local_cpus,
            # this machine offers what the workers are placed by (e.g. the robots it drives)
            resources={fleet.robot_resource: fleet.workers} if fleet.robot_resource else None,
            include_dashboard=False,
            namespace="anyskill",
            logging_level="WARNING",
            log_to_driver=True,
        )
    else:
        ray.init(address=cluster, namespace="anyskill", logging_level="WARNING")
    return True


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker process: its thread count (0: library defaults). Its JAX
    compilation cache is its host's (anyskill's default, ~/.cache/anyskill/jax): workers on
    one host share what the first of them compiled."""
    env = {}
    if threads:
        env.update(
            XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}",
            OMP_NUM_THREADS=str(threads),
            OPENBLAS_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
        )
    return env


def to_bytes(params: Any) -> bytes:
    from flax import serialization

    return serialization.to_bytes(params)


# ---- the actors (plain classes; wrapped with ray.remote at run time) ----------------------------


class ParameterServer:
    """The newest published policy: a version number and its serialised weights."""

    def __init__(self):
        self.version, self.blob, self.published = 0, None, 0.0

    def publish(self, version: int, blob: bytes) -> int:
        if version > self.version:
            self.version, self.blob, self.published = version, blob, time.time()
        return self.version

    def latest(self, have: int) -> tuple[int, bytes | None]:
        """``(version, weights)`` if newer than ``have``, else ``(version, None)``."""
        return (self.version, self.blob if self.version > have else None)


class DeployWorker:
    """One deploy worker: the run's env as a batch of vectorised envs and its policy at the
    newest version it could pull. ``start_files``: the starting policy's run directory
    (relative path → bytes), so the worker needs no shared filesystem."""

    def __init__(self, cfg_json: dict, start_files: dict, worker: int, server, timeout: float):
        from anyskill.algos.recap.value import ValueFunction
        from anyskill.flywheel.deployment import Deployment, RunEnv

        base, model, params = self._start(cfg_json, start_files, worker, server, timeout, 0)
        env = RunEnv.open(self.cfg, model.cfg.image_size)
        self.deployment = Deployment(self.cfg, env, base, ValueFunction(model.cfg, self.cfg.value))
        self.template = self.params = params
        self.version = 0
        self.batches = 0

    def _start(self, cfg_json, start_files, worker, server, timeout, seed_extra: int):
        """The run's config and starting policy, unpacked from what the driver sent into a
        directory of this worker: ``(base policy, model, params)`` (the model with the
        run's indicator input, if any)."""
        from anyskill.algos.recap.policy import indicator_model
        from anyskill.algos.vla.policy import VLAPolicy

        self.cfg = rundir.config_from_json(FlywheelConfig, cfg_json, "the driver's config")
        self.worker, self.server, self.timeout = worker, server, timeout
        self._dir = tempfile.TemporaryDirectory(prefix=f"anyskill-worker{worker}-")
        start = Path(self._dir.name) / "start"
        for rel, data in start_files.items():
            (start / rel).parent.mkdir(parents=True, exist_ok=True)
            (start / rel).write_bytes(data)
        policy = VLAPolicy(start, seed=self.cfg.seed + 1000 * (worker + 1) + seed_extra)
        model, params = indicator_model(policy.model, policy.params, self.cfg.indicator)
        base = policy.with_weights(params, model) if model is not policy.model else policy
        return base, model, params

    def pull(self) -> str | None:
        """Take the newest version from the parameter server; None, or what went wrong.
        Without a server (``server=None``: the worker run in-process, as the benchmark's
        baseline) it keeps its weights."""
        if self.server is None:
            return None
        import ray

        try:
            version, blob = ray.get(self.server.latest.remote(self.version), timeout=self.timeout)
        except Exception as e:  # unreachable, restarting, or dead: keep what we have
            return (
                f"worker {self.worker}: parameter server unreachable ({type(e).__name__}); "
                f"running version {self.version}"
            )
        if blob is not None:
            from flax import serialization

            self.params = serialization.from_bytes(self.template, blob)
            self.version = version
        return None

    def run_batch(self, batch: int, n: int) -> dict:
        """Deploy ``n`` episodes with the newest policy; they come back as numpy arrays."""
        from anyskill.algos.recap.variety import varied

        c = self.cfg
        problem = self.pull()
        method = c.deploy_with if self.version > 0 else "start"
        policy = self.deployment.policy(self.params, recap=method == "recap")
        policy = varied(policy, c.variety, c.variety_slow, c.variety_noise)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), 7_000 + batch), 1)
        t0 = time.perf_counter()
        ep = self.deployment.deploy(policy, key, n, c.corrector, f"fleet-b{batch}")
        seconds = time.perf_counter() - t0
        self.batches += 1
        episodes = []
        for i in range(n):
            t = int(ep.length[i])
            episodes.append(
                {
                    "frames": ep.frames(i),
                    "task": str(ep.task[i]),
                    "intervention": np.asarray(ep.intervention[i, :t], bool),
                    "success": bool(ep.success[i]),
                }
            )
        return {
            "worker": self.worker,
            "batch": batch,
            "version": self.version,
            "pid": os.getpid(),
            "seconds": seconds,
            "first": self.batches == 1,  # this process compiled its deployment in it
            "steps": int(np.sum(ep.length)),
            "problem": problem,
            "episodes": episodes,
        }


class HandOver:
    """A robot worker's ``/episodes`` channel: every uploaded episode is checked as the store
    would check it (:class:`~anyskill.serve.episodes.EpisodeSink`), then kept until the
    worker's next batch hands it to the driver, which writes it. The receipt a robot gets
    is this worker's count of episodes received, not a store index. An episode records the
    newest version served when it ended and the oldest it may have run (the version served
    when the robot's previous episode ended)."""

    def __init__(self, features: dict, live):
        from anyskill.serve.episodes import EpisodeSink, FeatureSpec

        self._check = EpisodeSink.__new__(EpisodeSink)  # its checks, without a writer
        self._check.features = {k: FeatureSpec(tuple(v[0]), v[1]) for k, v in features.items()}
        self.live = live
        self.queue: deque = deque()
        self.received = 0
        self._since = live.version
        self._cond = threading.Condition()

    def hello(self) -> dict:
        self._check.policy_version = VERSION_TAG.format(self.live.version)
        return self._check.hello()

    def check(self, msg: Any) -> dict:
        return self._check.check(msg)

    def store(self, episode: dict) -> int:
        with self._cond:
            version = self.live.version
            info = {**episode["episode_info"], "first_version": self._since}
            self.queue.append({**episode, "episode_info": info, "version": version})
            self._since = version
            self.received += 1
            self._cond.notify_all()
            return self.received - 1

    def take(self, n: int, wait_s: float) -> list[dict]:
        """Up to ``n`` episodes, waiting up to ``wait_s`` for the first."""
        with self._cond:
            self._cond.wait_for(lambda: self.queue, timeout=wait_s)
            return [self.queue.popleft() for _ in range(min(n, len(self.queue)))]


class RobotWorker(DeployWorker):
    """One robot of the fleet (``--deploy robots``): the newest policy version served on
    this host (``--robots.host``, port ``--robots.port`` + worker index) to the robot's
    runtime — ``anyskill run-robot --upload`` or any openpi client with an
    :class:`~anyskill.serve.episodes.EpisodeUploader` — which uploads each episode it
    finishes. A batch hands over the episodes that arrived (up to ``envs_per_worker``,
    waiting up to ``robot_wait_s`` for the first) and swaps in a newer version if the
    parameter server has one: between two forward passes, so a robot mid-episode continues
    on the new weights. ``--fleet.sim-robots``: a simulated robot of ``--env`` drives the
    served policy from a thread of this worker, through the same runtime and upload path."""

    def __init__(
        self,
        cfg_json: dict,
        start_files: dict,
        worker: int,
        server,
        timeout: float,
        features: dict,
    ):
        from anyskill.flywheel.deployment import method_policy
        from anyskill.policies.wrappers import HotSwap
        from anyskill.serve.server import ServerConfig, ServerThread

        # a restarted robot worker samples with other keys than the one before it
        self.base, _, params = self._start(
            cfg_json, start_files, worker, server, timeout, os.getpid()
        )
        c = self.cfg
        self.template = self.params = params
        self.version = 0
        self.batches = 0
        self.live = HotSwap(method_policy(c, self.base, params, recap=False), 0)
        self.sink = HandOver(features, self.live)
        port = c.robots.port + worker if c.robots.port else 0
        # one robot: batches of one (the server compiles the policy for that size only)
        server_cfg = ServerConfig(host=c.robots.host, port=port, max_batch=1)
        self.srv = ServerThread(self.live, server_cfg, episode_sink=self.sink).start()
        self.robot_stop = threading.Event()
        self.robot_error: str | None = None
        if c.fleet.sim_robots:
            threading.Thread(target=self._sim_robot, daemon=True, name="sim-robot").start()

    def url(self) -> str:
        """Where this worker's robot connects (its policy and its ``/episodes`` channel)."""
        return self.srv.url

    def _sim_robot(self) -> None:
        """A simulated robot on loopback: episodes against the served policy, uploaded."""
        from anyskill.serve.episodes import EpisodeChannelClosed
        from anyskill.serve.robot import SimRobot

        try:
            robot = SimRobot(self.cfg.env, self.base.model.cfg.image_size)
            cams = any(k.startswith("observation.images.") for k in self.sink._check.features)
            k = 0
            while not self.robot_stop.is_set():
                seed = (self.cfg.seed * 1_000_003 + self.worker * 10_007 + os.getpid()) * 97 + k
                robot.run(self.url(), episodes=1, upload=True, images=cams, seed=seed % (1 << 31))
                k += 1
        except EpisodeChannelClosed:
            pass
        except Exception as e:  # reported with the next batch
            self.robot_error = f"worker {self.worker}: simulated robot stopped ({e!r})"

    def _serve_newest(self) -> str | None:
        from anyskill.flywheel.deployment import method_policy

        problem = self.pull()
        if self.version != self.live.version:
            method = self.cfg.deploy_with
            policy = method_policy(self.cfg, self.base, self.params, recap=method == "recap")
            self.live.swap(policy, self.version)
        return problem

    def run_batch(self, batch: int, n: int) -> dict:
        """Hand over up to ``n`` episodes the robot uploaded (waiting up to
        ``--fleet.robot-wait-s`` for the first), then serve the newest version."""
        t0 = time.perf_counter()
        problem = self._serve_newest()
        episodes = self.sink.take(n, self.cfg.fleet.robot_wait_s)
        problem = problem or self.robot_error
        self.batches += 1
        out = []
        for e in episodes:
            out.append(
                {
                    "frames": e["frames"],
                    "task": e["task"],
                    "intervention": e["intervention"],
                    "success": e["success"],
                    "version": e["version"],
                    "episode_info": e["episode_info"],
                }
            )
        return {
            "worker": self.worker,
            "batch": batch,
            "version": self.version,
            "pid": os.getpid(),
            "seconds": time.perf_counter() - t0,
            "first": self.batches == 1,
            "steps": int(sum(len(e["intervention"]) for e in out)),
            "problem": problem,
            "episodes": out,
        }


# ---- the run's state --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FleetState:
    """``RUN/fleet/state.json``: where the learner is (written after every publish)."""

    version: int = 0
    """The newest published policy version (0: the starting policy)."""
    updates: int = 0
    """Policy updates of the learner so far."""
    cycles: int = 0
    """Learner cycles (value, advantages, updates, publish)."""
    batches: int = 0
    """Worker batches submitted so far (as of the last publish)."""
    starts: int = 0
    """Times the run was started or resumed; a batch's seed is ``(starts, batch)``, so no
    seed is used twice even when batches after the last publish are numbered again."""
    lost: int = 0
    """Episodes lost in workers that died mid-batch."""
    trained_on: int = 0
    """Fleet episodes in the store when the last cycle read it (a resumed run trains once
    more if more were stored since)."""
    learner_seconds: float = 0.0
    """Wall time spent in learner cycles."""


def fleet_dir(paths: RunPaths) -> Path:
    return paths.root / "fleet"


@dataclasses.dataclass
class WorkerStats:
    """What the collector knows of one worker."""

    episodes: int = 0
    batches: int = 0
    lost: int = 0
    deaths: int = 0
    seconds: float = 0.0
    """Seconds spent deploying (inside the worker), compiling batches left out."""
    timed: int = 0
    """Episodes of the batches timed in ``seconds``."""
    compile_seconds: float = 0.0
    """Seconds of each process's first batch (compilation and deployment)."""
    lag: float = 0.0
    """Versions between the learner and the policy the last batch ran."""
    version: int = 0
    requeued: int = 0
    """Queued batches a death cancelled before they ran (submitted again, nothing lost)."""
    pids: set = dataclasses.field(default_factory=set)
    problems: int = 0

    def to_json(self) -> dict:
        rate = self.timed / self.seconds if self.seconds else 0.0
        return {
            "episodes": self.episodes,
            "batches": self.batches,
            "lost": self.lost,
            "deaths": self.deaths,
            "requeued": self.requeued,
            "episodes_per_s": rate,
            "compile_seconds": self.compile_seconds,
            "version": self.version,
            "lag": self.lag,
            "processes": len(self.pids),
            "unreachable": self.problems,
        }


class Collector(threading.Thread):
    """The driver's collector: waits for worker batches, writes their episodes (the store's
    one writer), queues each worker's next batch, counts losses and restarts."""

    def __init__(self, ray, workers, fleet: FleetConfig, writer, store_lock, state, need: int):
        super().__init__(daemon=True, name="fleet-collector")
        self.ray, self.workers, self.fleet, self.writer = ray, workers, fleet, writer
        self.store_lock, self.state_ref = store_lock, state
        self.need = need  # episodes still to store
        self.stats = [WorkerStats() for _ in workers]
        self.pending: dict = {}
        self.stored = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.buffer: deque = deque()
        self.messages: deque = deque(maxlen=50)
        self.started_all = len(workers) == 1
        self.alive = [True] * len(workers)
        """Whether each worker's last outcome was a batch (not a death)."""

    # how many episodes are in flight or buffered: no batch is queued beyond the budget
    def _outstanding(self) -> int:
        n = len(self.pending) * self.fleet.envs_per_worker
        return n + sum(len(r["episodes"]) for r in self.buffer)

    def submit(self, i: int) -> None:
        if self.stored + self._outstanding() >= self.need:
            return
        st = self.state_ref()
        batch = st["starts"] * 1_000_000 + st["batches"]  # unique over resumes
        st["batches"] += 1
        ref = self.workers[i].run_batch.remote(batch, self.fleet.envs_per_worker)
        self.pending[ref] = (i, batch)

    def run(self) -> None:
        try:
            # two batches per worker: one running, one queued. The first worker starts alone
            # and the others once its first batch is back: it compiled the deployment into
            # JAX's persistent cache, which the others then read instead of compiling again
            self.submit(0)
            self.submit(0)
            while not self.stop_event.is_set() and (self.pending or self.buffer):
                self._poll()
                self._write()
                if self.stored >= self.need:
                    break
        except BaseException as e:  # surfaced by the driver
            self.error = e

    def _poll(self) -> None:
        ray = self.ray
        if not self.pending:
            time.sleep(0.05)
            return
        done, _ = ray.wait(list(self.pending), num_returns=1, timeout=0.5)
        # a worker runs its batches in the order they were submitted: of the batches a dead
        # worker fails, the oldest was running (its episodes are lost), the later ones were
        # only queued (nothing was run; they are submitted again)
        if done:  # every batch that is back, not only the first
            done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        for ref in sorted(done, key=lambda r: self.pending[r][1]):
            i, _batch = self.pending.pop(ref)
            s = self.stats[i]
            try:
                r = ray.get(ref)
            except ray.exceptions.RayTaskError:
                raise  # the worker's code failed: a bug or bad input, not a lost process
            except ray.exceptions.RayError as e:  # the process died or became unreachable
                if self.alive[i]:  # the batch it was running
                    self.alive[i] = False
                    s.lost += self.fleet.envs_per_worker
                    s.deaths += 1
                    self.state_ref()["lost"] += self.fleet.envs_per_worker
                    self.messages.append(
                        f"worker {i} died mid-batch ({type(e).__name__}): "
                        f"{self.fleet.envs_per_worker} episodes lost; Ray restarts it"
                    )
                else:
                    s.requeued += 1
                self.submit(i)
                self._start_rest()
                continue
            self.alive[i] = True
            s.batches += 1
            if r["first"]:
                s.compile_seconds += r["seconds"]
            else:
                s.seconds += r["seconds"]
                s.timed += len(r["episodes"])
            s.version = r["version"]
            s.lag = self.state_ref()["version"] - r["version"]
            s.pids.add(r["pid"])
            if r["problem"]:
                s.problems += 1
                self.messages.append(r["problem"])
            self.buffer.append(r)
            self.submit(i)
            self._start_rest()

    def _start_rest(self) -> None:
        """After the first worker's first batch (or its death): start the others."""
        if not self.started_all:
            self.started_all = True
            for j in range(1, len(self.workers)):
                self.submit(j)
                self.submit(j)

    def _write(self) -> None:
        if not self.buffer or not self.store_lock.acquire(timeout=0.01):
            return  # the learner is reading the store: keep the batches for later
        try:
            while self.buffer and self.stored < self.need:
                r = self.buffer.popleft()
                for e in r["episodes"]:
                    if self.stored >= self.need:
                        break
                    iv = e["intervention"]
                    version = e.get("version", r["version"])  # a robot's: when it ended
                    self.writer.add_episode(
                        e["frames"],
                        task=e["task"],
                        intervention=iv,
                        success=e["success"],
                        source="corrected" if iv.any() else "autonomous",
                        policy_version=VERSION_TAG.format(version),
                        episode_info={
                            **e.get("episode_info", {}),
                            "worker": r["worker"],
                            "version": version,
                            "batch": r["batch"],
                            "corrected": bool(iv.any()),
                        },
                    )
                    self.stored += 1
                    self.stats[r["worker"]].episodes += 1
        finally:
            self.store_lock.release()


# ---- the driver ------------------------------------------------------------------------------


@dataclasses.dataclass
class FleetResult:
    state: FleetState
    stored: int
    """Fleet episodes in the store at the end (this run and earlier ones)."""
    workers: list[dict]
    report: Path
    rows: list[dict]


def stored_fleet_episodes(ctx) -> int:
    pv = ctx.dataset().episodes.policy_version
    return int(sum(str(v).startswith(VERSION_TAG.format("")) for v in pv))


def start_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_fleet(cfg: FlywheelConfig, on_cycle=None, on_started=None) -> FleetResult:
    """Run (or with ``cfg.resume`` continue) the flywheel of ``cfg`` on Ray until
    ``--fleet.episodes`` fleet episodes are stored. ``on_cycle(version, collector)``: called
    after each publish (tests kill things there); ``on_started(workers, server)``: once the
    actors exist."""
    from anyskill.flywheel import phases
    from anyskill.flywheel.context import RunContext
    from anyskill.flywheel.loop import check_resume

    if cfg.cluster is None:
        raise ValueError("run_fleet needs --cluster (local or an address)")
    ray = require_ray(local=cfg.cluster == "local")
    paths = RunPaths(Path(cfg.run_dir))
    check_resume(cfg, paths)
    fdir = fleet_dir(paths)
    fs = FleetState()
    if (fdir / "state.json").exists():
        fs = rundir.load_config(FleetState, fdir / "state.json")
    paths.root.mkdir(parents=True, exist_ok=True)
    fdir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(paths.config, rundir.config_to_json(cfg))
    fs = dataclasses.replace(fs, starts=fs.starts + 1)
    rundir.write_json(fdir / "state.json", rundir.config_to_json(fs))
    ctx = RunContext.open(cfg)
    f, method = cfg.fleet, cfg.deploy_with
    params, version = ctx.start_params, 0
    if ctx.paths.policy(method).exists():  # resumed: the last published version
        params, meta = checkpoint.load(ctx.paths.policy(method), ctx.start_params)
        version = int(meta.get("version", 0))
    fs = dataclasses.replace(fs, version=version)
    have = stored_fleet_episodes(ctx)
    log(
        f"fleet: {f.workers} workers x {f.envs_per_worker} envs, {method} learner, "
        f"{have}/{f.episodes} episodes stored, policy version {version}"
    )
    started = connect(cfg.cluster, f)
    shared = dataclasses.asdict(fs)  # the collector counts batches and losses here
    store_lock = threading.Lock()
    collector, workers = None, []
    try:
        server = ray.remote(ParameterServer).options(num_cpus=0, max_restarts=-1).remote()
        if version:
            ray.get(server.publish.remote(version, to_bytes(params)))
        opts: dict = dict(
            num_cpus=f.worker_cpus,
            max_restarts=-1,
            max_task_retries=0,
            runtime_env={"env_vars": worker_env(f.worker_threads)},
        )
        if f.robot_resource:
            opts["resources"] = {f.robot_resource: 1}
        files = ray.put(start_files(paths.start))
        cfg_json = rundir.config_to_json(cfg)
        if cfg.deploy == "robots":
            from anyskill.serve.episodes import store_features

            feats = {k: (list(v.shape), v.dtype) for k, v in store_features(ctx.dataset()).items()}
            Worker = ray.remote(RobotWorker)
            workers = [
                Worker.options(**opts).remote(cfg_json, files, i, server, f.pull_timeout_s, feats)
                for i in range(f.workers)
            ]
            _announce_robots(ray, workers, fdir)
        else:
            Worker = ray.remote(DeployWorker)
            workers = [
                Worker.options(**opts).remote(cfg_json, files, i, server, f.pull_timeout_s)
                for i in range(f.workers)
            ]
        if on_started is not None:
            on_started(workers, server)
        from anyskill.data.writer import EpisodeWriter

        writer = EpisodeWriter.open(paths.data)
        with writer:
            collector = Collector(
                ray, workers, f, writer, store_lock, lambda: shared, f.episodes - have
            )
            collector.start()
            try:
                fs = _learn(
                    ctx, cfg, fs, shared, collector, store_lock, server, params, on_cycle, have
                )
            finally:  # the collector stops writing before the writer closes, however we leave
                collector.stop_event.set()
                collector.join()
            if collector.error is not None:
                raise collector.error
        fs = dataclasses.replace(fs, batches=shared["batches"], lost=shared["lost"])
        rundir.write_json(fdir / "state.json", rundir.config_to_json(fs))
        workers_json = [s.to_json() for s in collector.stats]
    finally:
        if collector is not None:
            collector.stop_event.set()
        for w in workers:  # batches still running are not needed any more
            ray.kill(w, no_restart=True)
        if started:
            ray.shutdown()
    rows = _evaluate(ctx, cfg, phases)
    report = _report(cfg, fdir, fs, workers_json, rows, by_version(ctx))
    return FleetResult(fs, stored_fleet_episodes(ctx), workers_json, report, rows)


def _announce_robots(ray, workers, fdir: Path) -> None:
    """Log where each robot connects and write it to ``RUN/fleet/robots.json``."""
    urls = ray.get([w.url.remote() for w in workers])
    for i, url in enumerate(urls):
        log(
            f"fleet: robot worker {i} serves at {url} (on its robot: anyskill run-robot "
            f"--server {url} --upload)"
        )
    rundir.write_json(fdir / "robots.json", {"urls": urls})


def _learn(ctx, cfg, fs: FleetState, shared, collector, store_lock, server, params, on_cycle, have):
    """The learner: a cycle (value function, advantages, ``publish_every`` updates, publish)
    whenever ``min_new_episodes`` new episodes are stored, until collection is done; then one
    last cycle on everything."""
    from anyskill.flywheel import phases

    ray, f, method = collector.ray, cfg.fleet, cfg.deploy_with
    fdir = fleet_dir(ctx.paths)
    # episodes stored before this run that no cycle has read yet count as new
    seen = -max(have - fs.trained_on, 0)
    last_status = time.perf_counter()
    t_start = time.perf_counter()
    while True:
        finished = not collector.is_alive()
        new = collector.stored - seen
        if collector.error is not None:
            raise collector.error
        if new >= max(f.min_new_episodes, 1) or (finished and new > 0):
            t0 = time.perf_counter()
            with store_lock:  # a consistent snapshot: the collector buffers meanwhile
                seen = collector.stored
                params = _cycle(ctx, cfg, fs, params, phases)
                trained_on = have + seen
            fs = dataclasses.replace(
                fs,
                version=fs.version + 1,
                updates=fs.updates + f.publish_every,
                cycles=fs.cycles + 1,
                trained_on=trained_on,
                learner_seconds=fs.learner_seconds + time.perf_counter() - t0,
                batches=shared["batches"],
                lost=shared["lost"],
            )
            checkpoint.save(
                ctx.paths.policy(method),
                params,
                {"round": 0, "version": fs.version, "updates": fs.updates},
            )
            rundir.write_json(fdir / "state.json", rundir.config_to_json(fs))
            shared["version"] = fs.version
            try:
                ray.get(server.publish.remote(fs.version, to_bytes(params)), timeout=30)
            except Exception as e:  # workers keep their version; the next publish retries
                log(f"fleet: could not publish version {fs.version} ({type(e).__name__})")
            if on_cycle is not None:
                on_cycle(fs.version, collector)
        elif finished:
            break
        else:
            time.sleep(0.2)
        now = time.perf_counter()
        if now - last_status >= f.status_every_s or (finished and new == 0):
            _status(fdir, fs, collector, now - t_start)
            last_status = now
    return fs


def _cycle(ctx, cfg, fs: FleetState, params, phases):
    """One learner cycle on the store as it is: the value function (pretrained the first
    time, fine-tuned after), every frame's advantage, ``publish_every`` policy updates."""
    c, k = cfg, fs.cycles + 1
    say = f"fleet v{fs.version + 1}: "
    ds = ctx.dataset()
    data = ctx.training_data(c.seed + 100 * k)
    prev, _ = ctx.value()
    vp, losses = phases.train_value(ctx, ds, data, prev, k, say)
    checkpoint.save(
        ctx.paths.value,
        vp,
        {
            "round": 0,
            "cycle": k,
            "loss": float(losses[-50:].mean()),
            "trained_on_episodes": int(ds.num_episodes),
        },
    )
    labels = phases.advantages_of(ctx, ds, data, vp)
    log(
        f"{say}{cfg.fleet.publish_every} updates of {LABELS[cfg.deploy_with]} ({ds.num_episodes} episodes)"
    )
    return phases.finetune(
        ctx, cfg.deploy_with, params, labels, cfg.fleet.publish_every, c.seed + k
    )


def _status(fdir: Path, fs: FleetState, collector, elapsed: float) -> None:
    ws = [s.to_json() for s in collector.stats]
    ups = fs.updates / fs.learner_seconds if fs.learner_seconds else 0.0
    parts = [
        f"w{i} {w['episodes']} ep {w['episodes_per_s']:.2f}/s lag {w['lag']:.0f}"
        + (f" lost {w['lost']}" if w["lost"] else "")
        + (f" unreachable {w['unreachable']}" if w["unreachable"] else "")
        for i, w in enumerate(ws)
    ]
    while collector.messages:
        log(f"fleet: {collector.messages.popleft()}")
    log(
        f"fleet: v{fs.version} | {collector.stored} stored, {sum(w['lost'] for w in ws)} lost | "
        + " | ".join(parts)
        + f" | learner {ups:.1f} upd/s"
    )
    rundir.append_metrics(
        fdir / "metrics.jsonl",
        {
            "elapsed_s": elapsed,
            "version": fs.version,
            "updates": fs.updates,
            "updates_per_s": ups,
            "stored": collector.stored,
            "workers": ws,
        },
    )


def _evaluate(ctx, cfg, phases) -> list[dict]:
    """The starting and the final policy on the run's evaluation episodes (no corrector);
    none without a simulator (``--env robot``: the robots' episodes are the measure)."""
    if not cfg.simulated:
        return []
    hz = ctx.env.control_hz
    rows = []
    key, purpose = phases.evaluation_episodes(cfg, 1)
    final = ctx.policy_params(cfg.deploy_with)
    for name, params in (("start", ctx.start_params), (cfg.deploy_with, final)):
        policy = ctx.deployment.policy(params, recap=name == "recap")
        ep = ctx.deployment.evaluate(policy, key, cfg.eval_episodes, purpose)
        rows.append({"method": name, **phases.outcome_metrics(ep.success, ep.length, hz)})
    return rows


def by_version(ctx) -> list[dict]:
    """Fleet episodes in the store per policy version: how many, and their success rate
    (the measure of a fleet of real robots, with the interventions on them)."""
    ep = ctx.dataset().episodes
    groups: dict[int, list] = {}
    prefix = VERSION_TAG.format("")
    for i, v in enumerate(ep.policy_version):
        if str(v).startswith(prefix):
            groups.setdefault(int(str(v)[len(prefix) :]), []).append(i)
    rows = []
    for v in sorted(groups):
        idx = np.asarray(groups[v])
        success = np.asarray(ep.success)[idx]
        known = success != UNKNOWN_SUCCESS  # robots may upload episodes unlabelled
        rows.append(
            {
                "version": v,
                "episodes": len(idx),
                "success": float(np.mean(success[known] > 0)) if known.any() else None,
                "corrected": int(np.sum(np.asarray(ep.source)[idx] == "corrected")),
            }
        )
    return rows


def _report(
    cfg, fdir: Path, fs: FleetState, workers: list[dict], rows: list[dict], versions: list[dict]
) -> Path:
    where = (
        f"{cfg.fleet.workers} robot workers ({'simulated robots' if cfg.fleet.sim_robots else 'robots'})"
        if cfg.deploy == "robots"
        else f"{cfg.fleet.workers} deploy workers x {cfg.fleet.envs_per_worker} envs"
    )
    lines = [
        "# Flywheel on Ray",
        "",
        f"{where} on "
        f"`{cfg.env}`, cluster `{cfg.cluster}`; learner: {LABELS[cfg.deploy_with]}, "
        f"{fs.updates} updates in {fs.cycles} cycles, policy version {fs.version}; "
        f"{fs.lost} episodes lost to worker deaths.",
        "",
        "| policy | success | throughput (successes/h) | median time to success (s) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        med = r["median_time_to_success_s"]
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {r['success']:.3f} | "
            f"{r['throughput_per_h']:.0f} | {'—' if med is None else f'{med:.2f}'} |"
        )
    lines += ["", "| worker | episodes | episodes/s | deaths | lost | last version | lag |"]
    lines.append("|---|---|---|---|---|---|---|")
    for i, w in enumerate(workers):
        lines.append(
            f"| {i} | {w['episodes']} | {w['episodes_per_s']:.2f} | {w['deaths']} | "
            f"{w['lost']} | {w['version']} | {w['lag']:.0f} |"
        )
    lines += [
        "",
        "Fleet episodes by the policy version that ran them (success as labelled in the store):",
        "",
        "| version | episodes | success | corrected |",
        "|---|---|---|---|",
    ]
    for v in versions:
        succ = "—" if v["success"] is None else f"{v['success']:.3f}"
        lines.append(f"| {v['version']} | {v['episodes']} | {succ} | {v['corrected']} |")
    path = fdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    rundir.write_json(
        fdir / "result.json",
        {
            "state": dataclasses.asdict(fs),
            "workers": workers,
            "rows": rows,
            "by_version": versions,
        },
    )
    return path
