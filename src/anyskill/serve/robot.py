"""A simulated robot that runs a built-in tabletop task in real time against a policy server.

The JAX env stands in for the robot; everything between it and the server is the real
robot-side runtime (:mod:`anyskill.serve.runtime`), with latency, jitter and disconnects
injected on the link. The episodes are run by :func:`anyskill.rollout.rollout`: the runtime
is the policy (one action per control step, :class:`RuntimePolicy`), paced in real time.
``anyskill run-robot`` is this module's command line.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from anyskill.policies.base import Batch, ChunkPolicy, InputSpec, PolicySpec
from anyskill.serve.episodes import EpisodeChannelClosed, EpisodeUploader
from anyskill.serve.runtime import (
    ChunkRuntime,
    LinkFaults,
    PolicyLink,
    RuntimeConfig,
    boundary_jerk,
    hold_still,
    log_to_store,
    percentiles,
)

STATE, IMAGE, PROMPT = "observation/state", "observation/image", "prompt"
CAMERA = "observation.images.top"
FALLBACKS = ("hold", "expert")


@dataclasses.dataclass(frozen=True)
class RobotResult:
    """Summary of a run (printed as JSON by ``anyskill run-robot``)."""

    episodes: int
    success_rate: float
    fallback_fraction: float
    """Fraction of control steps where the fallback acted."""
    jerk_boundary_mean: float
    """Mean jerk (action units / s^2) on the two steps straddling each chunk switch."""
    jerk_boundary_p95: float
    jerk_interior_mean: float
    """Mean jerk on every other step (within chunks)."""
    switch_gap_mean: float
    """Mean distance between the old plan's and the new chunk's action where a new chunk
    took over (the jump a naive switch makes; real-time chunking keeps it small)."""
    realtime: bool
    """Real-time chunking was used (the plan sent with each request)."""
    delay_steps: int
    """The runtime's final estimate of the delay, in control steps."""
    late_steps: int
    """Steps executed on an old chunk because the next one was due and had not come."""
    server_ms: dict[str, float]
    """Percentiles of the server's queue + inference time of the chunks used."""
    latency_ms: dict[str, float]
    """Percentiles of request -> usable reply round trips (including injected delay)."""
    chunks: int
    stale_chunks: int
    deadline_misses: int
    request_errors: int
    reconnects: int
    overrun_steps: int
    """Control steps that took longer than the control period (the loop fell behind)."""
    steps: int
    recorded: str | None = None


class RuntimePolicy(ChunkPolicy):
    """The robot-side runtime as the policy of one simulated robot: every control step asks
    :class:`~anyskill.serve.runtime.ChunkRuntime` for the action (it executes the server's
    chunks and falls back when they are late), after holding until the step's wall-clock
    tick. The expert fallback reads the simulator's state (the privileged ``env/state``
    field); a real robot would estimate it from its sensors."""

    pad_batches = False

    def __init__(self, runtime: ChunkRuntime, env: Any, images: bool, privileged: bool):
        from anyskill.rollout import ENV_STATE_SPEC

        self.runtime, self.images, self.privileged = runtime, images, privileged
        size = env.image_size
        inputs = [InputSpec(STATE, (env.obs_dim,), "float32"), InputSpec(PROMPT, (), "str")]
        if images:
            inputs.append(InputSpec(IMAGE, (size, size, 3), "uint8"))
        if privileged:
            inputs.append(ENV_STATE_SPEC)
        self.spec = PolicySpec(
            tuple(inputs), env.action_dim, 1, env.control_hz, name="robot-runtime"
        )
        self.dt = 1.0 / env.control_hz
        self.state: Any = None  # the simulator's state at this step (privileged)
        self.fresh = True
        self.tick = 0.0
        self.overruns = 0
        self.steps = 0
        self.power_off_after: int | None = None

    def new_episode(self) -> None:
        """The next call starts a new episode (its prompt goes to the runtime)."""
        self.fresh = True

    def act(self, obs: Batch, key: Any = None) -> np.ndarray:
        from anyskill.rollout import ENV_STATE

        if self.power_off_after is not None and self.steps >= self.power_off_after:
            raise PoweredOff(f"switched off after {self.steps} control steps")
        self.steps += 1
        rt = self.runtime
        if self.fresh:
            rt.new_episode(obs[PROMPT][0])
            self.fresh = False
            self.tick = time.monotonic()
        else:  # hold until this step's tick
            self.tick += self.dt
            wait = self.tick - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                self.overruns += 1
                self.tick = time.monotonic()
        if self.privileged:
            self.state = obs[ENV_STATE]
        row = {STATE: obs[STATE][0], PROMPT: obs[PROMPT][0]}
        if self.images:
            row[IMAGE] = obs[IMAGE][0]
        action = rt.step(row)
        if len(rt.log) == 1:
            self.tick = time.monotonic()  # the clock starts once the first chunk is in
        return np.asarray(action, np.float32)[None, None]


class PoweredOff(Exception):
    """The simulated robot was switched off mid-episode (``power_off_after_steps``)."""


class SimRobot:
    """A tabletop task stepped in real time; build once (JAX compiles here), run many times."""

    def __init__(self, task: str = "tabletop-reach", image_size: int = 64):
        import jax

        from anyskill import envs
        from anyskill.envs.tabletop import ScriptedExpert, Tabletop

        env = envs.make(task, image_size=image_size)
        if not isinstance(env, Tabletop):
            raise ValueError(
                f"run-robot drives tabletop tasks (they have instructions); got {task}"
            )
        from anyskill.rollout import JaxBatchEnv

        self.task, self.env = task, env
        self.batch_env = JaxBatchEnv(env)
        self._expert = jax.jit(ScriptedExpert(env, noise=0.0).act)
        # compile the env's programs now, not in the first (real-time) episode
        b = self.batch_env
        carry = b.reset(np.zeros(1, int), jax.random.split(jax.random.key(0), 1))
        b.observe(carry, (InputSpec(IMAGE, (env.image_size, env.image_size, 3), "uint8"),))
        carry, _ = b.execute(carry, np.zeros((1, 1, env.action_dim), np.float32))
        jax.block_until_ready(carry)

    def run(
        self,
        server: str,
        episodes: int = 10,
        faults: LinkFaults | None = None,
        runtime: RuntimeConfig | None = None,
        fallback: str = "hold",
        images: bool | None = None,
        seed: int = 0,
        record: Path | None = None,
        connect_timeout_s: float = 30.0,
        progress: bool = False,
        upload: bool = False,
        power_off_after_steps: int | None = None,
    ) -> RobotResult:
        """Run ``episodes`` episodes in real time against ``server``; see :class:`RobotResult`.

        ``images=None`` sends the camera only if the server's metadata asks for
        ``observation/image``; ``record`` appends the executed episodes to an episode store;
        ``upload`` sends every finished episode back to the server's ``/episodes`` channel
        (the flywheel's robot rounds: :mod:`anyskill.flywheel.robots`).
        ``power_off_after_steps``: the robot is switched off after this many control steps in
        total, mid-episode if that is where it is (its unfinished episode is never sent; the
        result counts the episodes it finished)."""
        import jax

        env = self.env
        faults = faults or LinkFaults()
        runtime = runtime or RuntimeConfig()
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        link = PolicyLink(server, faults).start(wait_s=connect_timeout_s)
        if not link.connected:
            link.close()
            raise ConnectionError(
                f"no policy server answered at {server} within {connect_timeout_s} s"
            )
        meta = link.metadata or {}
        wanted = meta.get("inputs", {})
        if images is None:
            images = IMAGE in wanted
        if IMAGE in wanted and tuple(wanted[IMAGE]["shape"][:2]) != (env.image_size,) * 2:
            link.close()
            raise ValueError(
                f"the policy wants {IMAGE} of shape {wanted[IMAGE]['shape']}; this robot "
                f"renders {env.image_size}x{env.image_size} (drop --image-size to use the "
                "policy's)"
            )
        if meta.get("control_hz") not in (None, env.control_hz):
            print(
                f"warning: the policy's control rate {meta['control_hz']} Hz differs from the "
                f"task's {env.control_hz} Hz; executing at the task's rate"
            )
        from anyskill.rollout import EpisodeKeys, rollout

        uploader = None
        if upload:
            uploader = EpisodeUploader(server, timeout_s=connect_timeout_s)
            # the store decides what each frame carries; refuse what this robot cannot send
            providable = {"observation.state", "observation.goal", "action"}
            cams = [k for k in uploader.features if k.startswith("observation.images.")]
            missing = sorted(set(uploader.features) - providable - set(cams))
            if missing or (cams and not images):
                uploader.close()
                link.close()
                what = missing[0] if missing else cams[0]
                raise ValueError(
                    f"the server's store records {what!r} every frame, which this simulated "
                    f"robot {'cannot provide' if missing else 'only sends with --images'}"
                )
        keep_images = bool((record or uploader is not None) and images)
        rt_cfg = dataclasses.replace(
            runtime,
            image_key=IMAGE if keep_images else None,
            control_hz=runtime.control_hz or env.control_hz,  # the robot's own rate
        )
        policy: RuntimePolicy | None = None
        if fallback == "expert":
            # the sim knows its state; a real robot would estimate it from its sensors
            s0 = self.batch_env.reset(np.zeros(1, int), jax.random.split(jax.random.key(0), 1))
            jax.block_until_ready(self._expert(_first(s0.state).physics, jax.random.key(0)))

            def fallback_fn(obs):
                state = _first(policy.state)
                return np.asarray(self._expert(state.physics, jax.random.key(0)))

        else:
            fallback_fn = hold_still(env.action_dim)
        rt = ChunkRuntime(link, fallback_fn, rt_cfg)
        policy = RuntimePolicy(rt, env, images, privileged=fallback == "expert")
        policy.power_off_after = power_off_after_steps
        writer = None
        if record is not None:
            writer = _open_store(record, env, self.task, env.image_size if images else None)
        successes, steps, fb_steps = 0, 0, 0
        gaps: list[float] = []
        j_boundary: list[float] = []
        j_interior: list[float] = []

        def episode_done(ep) -> None:
            nonlocal successes, steps, fb_steps
            n = len(successes_seen)
            success = bool(ep.success[0])
            successes_seen.append(success)
            log = rt.log
            successes += success
            steps += int(ep.length[0])
            fb_steps += int(np.sum(log.intervention))
            g = np.asarray(log.switch_gap, np.float64)
            gaps.extend(g[np.isfinite(g)].tolist())
            jb, ji = boundary_jerk(log, env.control_hz)
            j_boundary.extend(jb)
            j_interior.extend(ji)
            if writer is not None:
                log_to_store(
                    log,
                    writer,
                    success,
                    policy_version=str(meta.get("name", "")),
                    camera=CAMERA if images else None,
                    episode_info={"env_seed": seed, "env_episode": n},
                )
            if uploader is not None:
                arr, t = log.arrays(), int(ep.length[0])
                frames = {}
                for name in uploader.features:
                    if name == "action":
                        frames[name] = arr["action"][:t]
                    elif name.startswith("observation.images."):
                        frames[name] = arr["images"][:t]
                    else:
                        frames[name] = (ep.goal if name == "observation.goal" else ep.state)[0, :t]
                uploader.send(
                    frames,
                    log.task,
                    success,
                    arr["intervention"][:t],
                    {"env_seed": seed, "env_episode": n, "robot": self.task},
                )
            if progress:
                print(
                    f"episode {n}: success={success} steps={len(log)} "
                    f"fallback={int(np.sum(log.intervention))}",
                    flush=True,
                )
            policy.new_episode()

        successes_seen: list[bool] = []
        # episode ep starts from reset(fold_in(key(seed), ep)), whatever ran before it
        starts = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
            np.arange(episodes)
        )
        try:
            rollout(
                self.batch_env,
                policy,
                EpisodeKeys(reset=starts, run=starts),
                num_envs=episodes,
                replan_every=1,
                parallel=1,
                on_episode=episode_done,
            )
        except PoweredOff:
            episodes = max(len(successes_seen), 1)
        except EpisodeChannelClosed as e:  # the round this robot fed is over
            print(f"run-robot: stopping: {e}", flush=True)
            episodes = max(len(successes_seen), 1)
        finally:
            link.close()
            if uploader is not None:
                uploader.close()
            if writer is not None:
                writer.close()  # releases the dataset's writer lock
        overruns = policy.overruns
        return RobotResult(
            episodes=episodes,
            success_rate=successes / episodes,
            fallback_fraction=fb_steps / max(steps, 1),
            jerk_boundary_mean=float(np.mean(j_boundary)) if j_boundary else float("nan"),
            jerk_boundary_p95=float(np.percentile(j_boundary, 95)) if j_boundary else float("nan"),
            jerk_interior_mean=float(np.mean(j_interior)) if j_interior else float("nan"),
            switch_gap_mean=float(np.mean(gaps)) if gaps else float("nan"),
            realtime=rt.counts["realtime_requests"] > 0,
            delay_steps=rt.delay_steps,
            late_steps=rt.counts["late_steps"],
            server_ms=percentiles(rt.server_ms),
            latency_ms=percentiles(rt.latencies_ms),
            chunks=rt.counts["chunks"],
            stale_chunks=rt.counts["stale"],
            deadline_misses=rt.counts["deadline_misses"],
            request_errors=rt.counts["errors"],
            reconnects=max(link.connects - 1, 0),
            overrun_steps=overruns,
            steps=steps,
            recorded=str(record) if record is not None else None,
        )


def _first(state: Any) -> Any:
    """Env 0 of a batched pytree."""
    import jax

    return jax.tree.map(lambda x: x[0], state)


def run_robot(
    server: str, task: str = "tabletop-reach", image_size: int | None = None, **kw
) -> RobotResult:
    """Build a :class:`SimRobot` for ``task`` and run it once (``anyskill run-robot``).
    ``image_size=None`` renders the camera at the size the server's policy declares."""
    if image_size is None:
        image_size = policy_image_size(server, kw.get("connect_timeout_s", 30.0)) or 64
    return SimRobot(task, image_size).run(server, **kw)


def policy_image_size(server: str, connect_timeout_s: float = 30.0) -> int | None:
    """The side of the square camera image the policy at ``server`` declares in its metadata
    (``inputs[observation/image].shape``), or None when it reads no image."""
    link = PolicyLink(server).start(wait_s=connect_timeout_s)
    try:
        if not link.connected:
            raise ConnectionError(
                f"no policy server answered at {server} within {connect_timeout_s} s"
            )
        wanted = (link.metadata or {}).get("inputs", {})
    finally:
        link.close()
    return int(wanted[IMAGE]["shape"][0]) if IMAGE in wanted else None


def _open_store(path: Path, env, task: str, image_size: int | None):
    from anyskill.data.format import vector_feature, video_feature
    from anyskill.data.writer import EpisodeWriter

    if (Path(path) / "meta" / "info.json").exists():
        return EpisodeWriter.open(path)
    features = {
        "observation.state": vector_feature(env.obs_dim),
        "action": vector_feature(env.action_dim),
    }
    if image_size is not None:
        features[CAMERA] = video_feature(image_size, image_size, int(env.control_hz))
    return EpisodeWriter.create(
        path, features, fps=int(env.control_hz), robot_type=task, source_env={"env": task}
    )
