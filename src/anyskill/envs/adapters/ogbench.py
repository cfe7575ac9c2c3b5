"""OGBench's goal-conditioned tasks for host policies, under OGBench's evaluation protocol.

OGBench (Park et al., 2024, "OGBench: Benchmarking Offline Goal-Conditioned RL") evaluates a
goal-conditioned policy on five fixed evaluation tasks per environment: each episode starts
with ``env.reset(options=dict(task_id=i, render_goal=False))`` for ``i`` in 1..5, the goal is
the observation in ``info["goal"]``, actions are clipped to [-1, 1], and an episode counts as
a success when OGBench's own ``info["success"]`` is set on its last step (the env terminates
on success). It reports ``evaluation/<task_name>_success`` per task and their mean,
``evaluation/overall_success``. :func:`evaluate_ogbench` does exactly that with any host
policy; :class:`OGBenchEnv` puts one OGBench env into the adapters' observation convention.

Only the environment is built (``ogbench.make_env_and_datasets(..., env_only=True)``):
nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from anyskill.envs.adapters._optional import LegacyGlobalRNG, prefer_headless_mujoco_gl, require
from anyskill.envs.adapters.evaluation import EvalResult, HostPolicy, evaluate
from anyskill.names import unknown_name

_PURPOSE = "anyskill.envs.adapters.ogbench"
gym = require("gymnasium", purpose=_PURPOSE)

STATE_KEY = "observation.state"
GOAL_KEY = "observation.goal"
#: OGBench's evaluation: episodes per task in its reference implementations
OGBENCH_EPISODES_PER_TASK = 50


def _ogbench_env_ids() -> list[str]:
    return sorted(
        spec_id
        for spec_id, spec in gym.registry.items()
        if isinstance(spec.entry_point, str) and spec.entry_point.startswith("ogbench.")
    )


def make_ogbench_env(name: str, **env_kwargs: Any) -> Any:
    """Build an OGBench env (no dataset download) from a dataset name such as
    ``"cube-single-play-v0"`` or an env name such as ``"cube-single-v0"``."""
    prefer_headless_mujoco_gl()
    ogbench = require("ogbench", purpose=_PURPOSE)
    if "singletask" in name.split("-"):
        raise ValueError(
            f"{name!r} is a single-task (reward-based) OGBench env; this adapter evaluates the "
            f"goal-conditioned versions, e.g. {name.replace('-singletask', '').split('-task')[0]!r}"
        )
    if name.startswith("visual-") or "pixels" in str(env_kwargs.get("ob_type", "")):
        raise ValueError(
            f"{name!r} has pixel observations; this adapter handles OGBench's state-based envs "
            "(drop the 'visual-' prefix)"
        )
    known = _ogbench_env_ids()
    if name in known:
        return gym.make(name, **env_kwargs)
    # A dataset name: OGBench strips the dataset type ('navigate', 'play', ...) itself.
    env_name = "-".join(name.split("-")[:-2] + name.split("-")[-1:])
    if env_name not in known and not name.endswith("-oraclerep-v0"):
        raise unknown_name("OGBench env or dataset", name, known)
    return ogbench.make_env_and_datasets(name, env_only=True, **env_kwargs)


class OGBenchEnv(gym.Wrapper):
    """One OGBench env with observations ``{"observation.state", "observation.goal"}``.

    Args:
      name: an OGBench dataset or env name (``"pointmaze-medium-navigate-v0"``,
        ``"antmaze-medium-navigate-v0"``, ``"cube-single-play-v0"``, ...).
      **env_kwargs: passed to OGBench's env constructor.

    ``reset(options=...)`` takes OGBench's options (``task_id`` in 1..``num_tasks``; without
    it OGBench draws a task at random); ``render_goal`` defaults to False so no OpenGL context
    is needed. ``info["is_success"]`` is OGBench's ``info["success"]`` as a bool (False on
    reset). ``reset(seed=s)`` makes the episode reproducible, including the start and goal
    noise OGBench draws from numpy's global RNG (drawn here from a private stream, so the
    caller's global RNG is untouched). One exception: OGBench's manipulation envs keep some
    controller state across resets, so the arm part of the goal observation can differ
    between two resets with the same seed (the start observation and the objects' goal
    poses, which decide success, do not).
    """

    def __init__(self, name: str, **env_kwargs: Any):
        env = make_ogbench_env(name, **env_kwargs)
        super().__init__(env)
        self.name = name
        self._global_rng = LegacyGlobalRNG()
        self._goal: np.ndarray | None = None
        self.task_infos: list[dict[str, Any]] = list(env.unwrapped.task_infos)
        self.num_tasks = len(self.task_infos)
        # One reset tells the goal's shape (an observation, or an oracle representation).
        with self._global_rng.active():
            ob, info = env.reset(options={"task_id": 1, "render_goal": False})
        unbounded = dict(low=-np.inf, high=np.inf, dtype=np.float32)
        self.observation_space = gym.spaces.Dict(
            {
                STATE_KEY: gym.spaces.Box(shape=np.shape(ob), **unbounded),
                GOAL_KEY: gym.spaces.Box(shape=np.shape(info["goal"]), **unbounded),
            }
        )
        inner = env.action_space
        # Our own copy: OGBench's reset draws warm-up actions from the inner action space's
        # RNG, which reset(seed=...) re-seeds; a user's action_space.sample() must not move it.
        self.action_space = gym.spaces.Box(inner.low, inner.high, inner.shape, np.float32)

    @property
    def task_names(self) -> list[str]:
        return [t["task_name"] for t in self.task_infos]

    def _observation(self, ob: np.ndarray) -> dict[str, np.ndarray]:
        return {
            STATE_KEY: np.asarray(ob, np.float32),
            GOAL_KEY: np.array(self._goal, np.float32),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        options = {"render_goal": False, **(options or {})}
        task_id = options.get("task_id")
        if task_id is not None and not (
            isinstance(task_id, int | np.integer) and 1 <= task_id <= self.num_tasks
        ):
            raise ValueError(
                f"task_id must be an int in [1, {self.num_tasks}] for {self.name}, got {task_id!r}"
            )
        if seed is not None:
            self._global_rng.reseed(seed)
            self.env.unwrapped.action_space.seed(seed)
        with self._global_rng.active():
            ob, info = self.env.reset(seed=seed, options=options)
        self._goal = np.asarray(info["goal"])
        info = {k: v for k, v in info.items() if k not in ("goal", "goal_rendered")} | {
            "is_success": False,
            "task_id": self.env.unwrapped.cur_task_id,
        }
        return self._observation(ob), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._goal is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        action = np.asarray(action)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} for {self.name}, got {action.shape}"
            )
        with self._global_rng.active():
            ob, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, is_success=bool(info["success"]))
        return self._observation(ob), float(reward), bool(terminated), bool(truncated), info


@dataclasses.dataclass(frozen=True)
class OGBenchResult:
    """Per-task results of OGBench's evaluation protocol."""

    #: the env evaluated
    env_name: str
    #: task name (e.g. ``"task1"``, ``"task1_horizontal"``) -> its episodes
    tasks: dict[str, EvalResult]

    @property
    def task_success(self) -> dict[str, float]:
        return {name: r.success_rate for name, r in self.tasks.items()}

    @property
    def overall_success(self) -> float:
        """Mean of the per-task success rates (OGBench's headline number)."""
        return float(np.mean(list(self.task_success.values())))

    def metrics(self) -> dict[str, float]:
        """The numbers under the names OGBench's reference code logs them."""
        out = {f"evaluation/{name}_success": s for name, s in self.task_success.items()}
        out["evaluation/overall_success"] = self.overall_success
        return out


def evaluate_ogbench(
    policy: HostPolicy,
    env: OGBenchEnv | str,
    episodes_per_task: int = OGBENCH_EPISODES_PER_TASK,
    seed: int = 0,
    *,
    task_ids: list[int] | None = None,
    max_steps: int | None = None,
) -> OGBenchResult:
    """Evaluate a host policy on an OGBench env's evaluation tasks (module docstring).

    Args:
      policy: ``policy({"observation.state", "observation.goal"}) -> action``.
      env: an :class:`OGBenchEnv` or an OGBench dataset/env name.
      episodes_per_task: episodes per evaluation task (OGBench's reference code uses 50).
      seed: episode ``j`` of task ``i`` starts with seed ``seed + (i - 1) * episodes_per_task + j``.
      task_ids: a subset of the tasks (1-based), default all of them.
      max_steps: stop episodes early (not OGBench's protocol; for smoke tests).
    """
    if isinstance(env, str):
        env = OGBenchEnv(env)
    ids = list(range(1, env.num_tasks + 1)) if task_ids is None else list(task_ids)
    tasks = {}
    for task_id in ids:
        if not 1 <= task_id <= env.num_tasks:
            raise ValueError(
                f"task_ids must be in [1, {env.num_tasks}] for {env.name}, got {task_id}"
            )
        tasks[env.task_names[task_id - 1]] = evaluate(
            policy,
            env,
            episodes_per_task,
            seed=seed + (task_id - 1) * episodes_per_task,
            reset_options={"task_id": task_id, "render_goal": False},
            max_steps=max_steps,
        )
    return OGBenchResult(env.name, tasks)


__all__ = [
    "OGBenchEnv",
    "OGBenchResult",
    "evaluate_ogbench",
    "make_ogbench_env",
    "OGBENCH_EPISODES_PER_TASK",
]
