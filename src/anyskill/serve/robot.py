"""A simulated robot that runs a built-in tabletop task in real time against a policy server.

The JAX env stands in for the robot; everything between it and the server is the real
robot-side runtime (:mod:`anyskill.serve.runtime`), with latency, jitter and disconnects
injected on the link. ``anyskill run-robot`` is this module's command line.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

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
        self.task, self.env = task, env
        self._reset = jax.jit(env.reset)
        self._step = jax.jit(env.step)
        self._render = jax.jit(env.render_image)
        self._expert = jax.jit(ScriptedExpert(env, noise=0.0).act)
        s = self._reset(jax.random.key(0))
        jax.block_until_ready(
            (self._step(s, np.zeros(env.action_dim, np.float32)), self._render(s.physics))
        )

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
    ) -> RobotResult:
        """Run ``episodes`` episodes in real time against ``server``; see :class:`RobotResult`.

        ``images=None`` sends the camera only if the server's metadata asks for
        ``observation/image``; ``record`` appends the executed episodes to an episode store."""
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
        current: dict[str, Any] = {}
        if fallback == "expert":  # compile now, not at the first fallback mid-episode
            s0 = self._reset(jax.random.key(0))
            jax.block_until_ready(self._expert(s0.physics, jax.random.key(0)))

            def fallback_fn(obs):  # the sim knows its state; a real robot would use sensors
                return np.asarray(self._expert(current["state"].physics, jax.random.key(0)))

        else:
            fallback_fn = hold_still(env.action_dim)
        rt_cfg = dataclasses.replace(runtime, image_key=IMAGE if (record and images) else None)
        rt = ChunkRuntime(link, fallback_fn, rt_cfg)
        writer = None
        if record is not None:
            writer = _open_store(record, env, self.task, env.image_size if images else None)
        dt = 1.0 / env.control_hz
        successes, steps, fb_steps, overruns = 0, 0, 0, 0
        j_boundary: list[float] = []
        j_interior: list[float] = []
        try:
            for ep in range(episodes):
                state = self._reset(jax.random.fold_in(jax.random.key(seed), ep))
                prompt = env.instruction(state)
                rt.new_episode(prompt)
                success = False
                tick = time.monotonic()
                for _ in range(env.episode_length):
                    current["state"] = state
                    obs = {STATE: np.asarray(state.obs), PROMPT: prompt}
                    if images:
                        obs[IMAGE] = np.asarray(self._render(state.physics))
                    action = rt.step(obs)
                    if len(rt.log) == 1:
                        tick = time.monotonic()  # the clock starts once the first chunk is in
                    state = self._step(state, action)
                    steps += 1
                    if bool(state.done):
                        success = bool(state.success)
                        break
                    tick += dt
                    wait = tick - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        overruns += 1
                        tick = time.monotonic()
                log = rt.log
                successes += success
                fb_steps += int(np.sum(log.intervention))
                jb, ji = boundary_jerk(log, env.control_hz)
                j_boundary += jb
                j_interior += ji
                if writer is not None:
                    log_to_store(
                        log,
                        writer,
                        success,
                        policy_version=str(meta.get("name", "")),
                        camera=CAMERA if images else None,
                        episode_info={"env_seed": seed, "env_episode": ep},
                    )
                if progress:
                    print(
                        f"episode {ep}: success={success} steps={len(log)} "
                        f"fallback={int(np.sum(log.intervention))}",
                        flush=True,
                    )
        finally:
            link.close()
            if writer is not None:
                writer.close()  # releases the dataset's writer lock
        return RobotResult(
            episodes=episodes,
            success_rate=successes / episodes,
            fallback_fraction=fb_steps / max(steps, 1),
            jerk_boundary_mean=float(np.mean(j_boundary)) if j_boundary else float("nan"),
            jerk_boundary_p95=float(np.percentile(j_boundary, 95)) if j_boundary else float("nan"),
            jerk_interior_mean=float(np.mean(j_interior)) if j_interior else float("nan"),
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
