"""anyskill environments as Gymnasium environments, one at a time or N at once.

* :class:`GymnasiumEnv` — a ``gymnasium.Env`` around any anyskill :class:`~anyskill.envs.Env`
  (jitted ``reset``/``step``), for tools that speak Gymnasium (checkers, RL libraries,
  LeRobot-style evaluation).
* :class:`GymnasiumVectorEnv` — a ``gymnasium.vector.VectorEnv`` running N envs as one
  ``jax.jit(jax.vmap(env.step))`` call per step.
* Every env in :data:`anyskill.envs.REGISTRY` is registered with Gymnasium when this module
  is imported, as ``anyskill/<name>-v0``: ``gymnasium.make("anyskill/pointmaze-u-v0")`` and
  ``gymnasium.make_vec(...)`` work after ``import anyskill.envs.adapters.gymnasium``, or with
  no import through Gymnasium's module prefix,
  ``gymnasium.make("anyskill.envs.adapters.gymnasium:anyskill/pointmaze-u-v0")``.
  :func:`register_gymnasium_envs` registers envs added to the registry later, or under
  another namespace.

Episode length. ``max_episode_steps`` is honoured everywhere, for every env: by
``gymnasium.make`` through Gymnasium's ``TimeLimit`` (the anyskill env's own clock is then
switched off, so a limit longer than the env's default is not cut short by it), and by
``gymnasium.make_vec`` / the classes here through :func:`with_episode_length`. Either way the
default is the env's ``episode_length`` (the spec's ``max_episode_steps``); an explicit limit
applies to every task alike, also for envs whose tasks have lengths of their own (the mixed
``tabletop`` env).

Observations follow the adapters' convention (see :mod:`anyskill.envs.adapters.evaluation`):
``{"observation.state": obs, "observation.goal": goal}`` as float32, plus
``"observation.images.<camera>"`` (uint8 ``[H, W, 3]``) when the env renders images, and the
language instruction in ``info["task"]`` when the env has one.

Episode ends. The anyskill env resets inside ``step`` and keeps the ended episode's last
observation in ``State.final_obs``/``final_goal``. :class:`GymnasiumEnv` reports that final
observation with ``terminated``/``truncated`` (never the next episode's first one) and the
following ``reset()`` starts the episode the env had already drawn — so a single env and the
vector env (``AutoresetMode.SAME_STEP``: the new episode's observation, the ended one's in
``info["final_obs"]``) play the very same episodes from the same seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.envs import REGISTRY, Env, PointMaze, State, make
from anyskill.envs.adapters._optional import require

gym = require("gymnasium", purpose="anyskill.envs.adapters.gymnasium")
spaces = gym.spaces
AutoresetMode = gym.vector.AutoresetMode

STATE_KEY = "observation.state"
GOAL_KEY = "observation.goal"
IMAGE_KEY_PREFIX = "observation.images."
#: camera name in the image key when the env does not name its camera (``camera_name``)
DEFAULT_CAMERA = "front"


# ---- what an env offers ------------------------------------------------------------------
def _has_images(env: Env) -> bool:
    return getattr(env, "image_size", 0) > 0 and callable(getattr(env, "render_image", None))


def _has_instruction(env: Env) -> bool:
    return callable(getattr(env, "instruction", None))


def _render_modes(env: Env, render_mode: str | None) -> list[str]:
    """The env's render modes; raises if ``render_mode`` is not one of them."""
    modes = ["rgb_array"] if _can_render(env) else []
    if render_mode is not None and render_mode not in modes:
        raise ValueError(
            f"render_mode={render_mode!r} is not supported by {type(env).__name__}; "
            f"supported: {modes or 'none (the env has no render_image)'}"
        )
    return modes


def _can_render(env: Env) -> bool:
    return callable(getattr(env, "render_image", None)) or isinstance(env, PointMaze)


def image_key(env: Env) -> str:
    """The observation key of the env's camera image, ``"observation.images.<camera>"``."""
    return IMAGE_KEY_PREFIX + getattr(env, "camera_name", DEFAULT_CAMERA)


def _state_bounds(env: Env) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension bounds of ``obs`` for the observation space.

    An env may declare ``obs_bounds = (low, high)``; the point mazes' bounds follow from their
    geometry; anything else is unbounded (Gymnasium's checker then warns, nothing more).
    """
    if hasattr(env, "obs_bounds"):
        low, high = (
            np.broadcast_to(np.asarray(b, np.float32), (env.obs_dim,)) for b in env.obs_bounds
        )
        return low, high
    if isinstance(env, PointMaze):
        rows, cols = env.walls.shape
        corner_lo = np.asarray(env.to_world(jnp.zeros(2)), np.float32)
        corner_hi = np.asarray(env.to_world(jnp.asarray([rows, cols], jnp.float32)), np.float32)
        # The speed clamp rescales the velocity in float32, which can land an ulp above
        # max_speed: leave a margin so a legal observation is never outside the space.
        v = np.float32(env.max_speed * 1.001)
        return (
            np.array([*corner_lo, -v, -v], np.float32),
            np.array([*corner_hi, v, v], np.float32),
        )
    return np.full(env.obs_dim, -np.inf, np.float32), np.full(env.obs_dim, np.inf, np.float32)


def observation_space(env: Env) -> Any:
    """The ``spaces.Dict`` of one env's observations (see the module docstring)."""
    low, high = _state_bounds(env)
    entries = {STATE_KEY: spaces.Box(low, high, (env.obs_dim,), np.float32)}
    if env.goal_dim > 0:
        idx = list(env.goal_indices)
        entries[GOAL_KEY] = spaces.Box(low[idx], high[idx], (env.goal_dim,), np.float32)
    if _has_images(env):
        size = int(env.image_size)
        entries[image_key(env)] = spaces.Box(0, 255, (size, size, 3), np.uint8)
    return spaces.Dict(entries)


#: the anyskill env's own clock when Gymnasium's TimeLimit keeps time (``gymnasium.make``):
#: further than any episode runs, within int32 (``State.t``)
NO_LIMIT = 2**31 - 1


@functools.cache
def _limited_class(cls: type) -> type:
    """``cls`` with one episode length for every task (``episode_limit``), for envs whose
    length is not a constructor field (a tabletop env derives it from its task families)."""

    def episode_limit(self, physics: Any) -> int:
        return self.episode_length

    return type(
        cls.__name__,
        (cls,),
        {"episode_limit": episode_limit, "__module__": cls.__module__, "__doc__": cls.__doc__},
    )


def _has_length_field(env: Env) -> bool:
    return dataclasses.is_dataclass(env) and any(
        f.name == "episode_length" and f.init for f in dataclasses.fields(env)
    )


def with_episode_length(env: Env, max_episode_steps: int) -> Env:
    """``env`` with every episode truncated after ``max_episode_steps`` steps (``-1``: never).

    An env with an ``episode_length`` field (the point mazes) is rebuilt with it; any other
    (a tabletop env, whose tasks set their own lengths) gets the same length for every task.
    """
    if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int | np.integer):
        raise TypeError(f"max_episode_steps must be an int, got {max_episode_steps!r}")
    steps = NO_LIMIT if max_episode_steps == -1 else int(max_episode_steps)
    if not 1 <= steps <= NO_LIMIT:
        raise ValueError(
            f"max_episode_steps must be >= 1 (or -1 for no limit), got {max_episode_steps}"
        )
    uniform = type(env).episode_limit is Env.episode_limit
    if uniform and steps == env.episode_length:
        return env
    if uniform and _has_length_field(env):
        return dataclasses.replace(env, episode_length=steps)
    limited = copy.copy(env)  # frozen dataclasses: set through object.__setattr__
    object.__setattr__(limited, "__class__", _limited_class(type(env)))
    object.__setattr__(limited, "episode_length", steps)
    return limited


def _resolve_env(env: Env | str, max_episode_steps: int | None, overrides: dict) -> Env:
    """An env instance from an instance or a registry name (+ overrides), with
    ``max_episode_steps`` (``None``: the env's own episode length)."""
    if isinstance(env, str):
        env = make(env, **overrides)
    elif not isinstance(env, Env):
        raise TypeError(f"env must be an anyskill Env or a registered name, got {type(env)}")
    elif overrides:
        raise ValueError(
            f"overrides {sorted(overrides)} need an env name (e.g. 'pointmaze-u'), not an instance: "
            f"build the instance with them instead"
        )
    return env if max_episode_steps is None else with_episode_length(env, max_episode_steps)


# ---- compiled programs, shared by envs with the same settings ----------------------------
@struct.dataclass
class _StepOutput:
    """What the host needs after one step (``[N, ...]`` under vmap).

    obs, goal:              the current episode's observation and goal (after auto-reset,
                            the new episode's first ones)
    final_obs, final_goal:  the observation and goal the step ended on (== obs, goal unless
                            the episode ended)
    reward, terminated, truncated, success: the step's, for the episode it ended
    next_success:           success of (obs, goal): the reset info of an env that
                            auto-reset on this step (Gymnasium's SAME_STEP semantics)
    """

    obs: jax.Array
    goal: jax.Array
    final_obs: jax.Array
    final_goal: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    success: jax.Array
    next_success: jax.Array


class _Programs:
    """Jitted reset/step of one env configuration (compiled lazily, on first call)."""

    def __init__(self, env: Env):
        images = _has_images(env)

        def reset_from_seed(seed: jax.Array) -> State:
            return env.reset(jax.random.key(seed))

        def begin(state: State) -> State:
            # An auto-reset state with the flags of a fresh ``reset``: bit-identical to
            # ``env.reset(key)`` for the key the auto-reset used.
            return state.replace(
                reward=jnp.zeros_like(state.reward),
                terminated=jnp.zeros_like(state.terminated),
                truncated=jnp.zeros_like(state.truncated),
                success=env.is_success(state.obs, state.goal),
                final_obs=state.obs,
                final_goal=state.goal,
            )

        def step(state: State, action: jax.Array):
            new = env.step(state, action)
            host = _StepOutput(
                obs=new.obs,
                goal=new.goal,
                final_obs=new.final_obs,
                final_goal=new.final_goal,
                reward=new.reward,
                terminated=new.terminated,
                truncated=new.truncated,
                success=new.success,
                next_success=env.is_success(new.obs, new.goal),
            )
            # The frame of an ended episode's last observation needs the physics before the
            # auto-reset, which State does not keep, so envs with images recompute it here
            # (XLA's common-subexpression elimination can merge it with env.step's own).
            frame_physics = (
                env._step_physics(state.physics, jnp.clip(action, -1.0, 1.0)) if images else None
            )
            return new, host, frame_physics

        self.reset_from_seed = jax.jit(reset_from_seed)
        self.reset_from_key = jax.jit(env.reset)
        self.begin = jax.jit(begin)
        self.step = jax.jit(step)
        self.vreset_from_seed = jax.jit(jax.vmap(reset_from_seed))
        self.vreset_from_key = jax.jit(jax.vmap(env.reset))
        self.vstep = jax.jit(jax.vmap(step))
        self.select = jax.jit(
            lambda mask, a, b: jax.tree.map(
                lambda x, y: jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, y), a, b
            )
        )


@dataclasses.dataclass(frozen=True)
class _ProgramsKey:
    key: Hashable
    env: Env = dataclasses.field(compare=False, hash=False)


def _config_key(env: Env) -> Hashable:
    """Envs are static settings: two dataclass envs of one class with equal fields trace to the
    same program, so they share one compilation (XLA:CPU takes seconds per program)."""
    if dataclasses.is_dataclass(env):
        # episode_length too: with_episode_length sets it on envs where it is not a field
        fields = tuple((f.name, getattr(env, f.name)) for f in dataclasses.fields(env))
        key = (type(env), fields, getattr(env, "episode_length", None))
        try:
            hash(key)
            return key
        except TypeError:
            pass
    return ("instance", id(env))  # the cache entry holds ``env``, so the id is not reused


@functools.lru_cache(maxsize=16)
def _cached_programs(key: _ProgramsKey) -> _Programs:
    return _Programs(key.env)


def _programs(env: Env) -> _Programs:
    return _cached_programs(_ProgramsKey(_config_key(env), env))


class _FrameRenderer:
    """``env.render_image(physics)`` jitted (vmapped for a batch) when it traces, else called
    on host copies one env at a time (a numpy/Pillow renderer)."""

    def __init__(self, render_image: Callable[[Any], Any], batched: bool):
        self._fn = render_image
        self._batched = batched
        self._compiled = jax.jit(jax.vmap(render_image) if batched else render_image)
        self._traceable: bool | None = None

    def __call__(self, physics: Any) -> np.ndarray:
        if self._traceable is not False:
            try:
                frames = np.asarray(self._compiled(physics))
                self._traceable = True
                return frames.astype(np.uint8, copy=False)
            except Exception:
                if self._traceable:  # it traced before: this is a real error
                    raise
                self._traceable = False
        physics = jax.device_get(physics)
        if not self._batched:
            return np.asarray(self._fn(physics), np.uint8)
        n = jax.tree.leaves(physics)[0].shape[0]
        return np.stack(
            [
                np.asarray(self._fn(jax.tree.map(lambda x, i=i: x[i], physics)), np.uint8)
                for i in range(n)
            ]
        )


def _check_frames(frames: np.ndarray, expected: tuple[int, ...], env: Env) -> np.ndarray:
    if frames.shape != expected:
        raise ValueError(
            f"{type(env).__name__}.render_image returned shape {frames.shape}; with "
            f"image_size={env.image_size} the observation space expects {expected}"
        )
    return frames


def _as_actions(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(action)
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"action must be numeric, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def _seed32(rng: np.random.Generator) -> np.uint32:
    return np.uint32(rng.integers(0, 2**32, dtype=np.uint64))


def _maze_frame(env: PointMaze, obs: np.ndarray, goal: np.ndarray, size: int) -> np.ndarray:
    from anyskill.envs.render import render_maze_frames

    pos = np.asarray(obs)[list(env.goal_indices)]
    return render_maze_frames(env, pos[None], np.asarray(goal), size=size, trail_length=0)[0]


# ---- single env -------------------------------------------------------------------------
class GymnasiumEnv(gym.Env):
    """One anyskill env as a ``gymnasium.Env`` with Dict observations (see module docstring).

    Args:
      env: an anyskill env instance, or a registry name such as ``"pointmaze-u"``.
      render_mode: ``None`` or ``"rgb_array"`` (the env's ``render_image``, or the maze
        renderer for point mazes).
      render_size: longer side in pixels of maze renderings.
      max_episode_steps: episode length (default: the env's; ``-1``: never truncate), see
        :func:`with_episode_length`.
      **overrides: settings for ``anyskill.envs.make(name, **overrides)``.

    The action space is ``Box(-1, 1, (action_dim,), float32)``; ``info["is_success"]`` says
    whether the observation returned is within the success threshold of the goal.
    ``reset(seed=s)`` is deterministic; ``reset()`` continues the env's own random stream.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        env: Env | str,
        render_mode: str | None = None,
        render_size: int = 256,
        max_episode_steps: int | None = None,
        **overrides: Any,
    ):
        self.env = _resolve_env(env, max_episode_steps, overrides)
        self._programs = _programs(self.env)
        self.observation_space = observation_space(self.env)
        self.action_space = spaces.Box(-1.0, 1.0, (self.env.action_dim,), np.float32)
        modes = _render_modes(self.env, render_mode)
        self.metadata = {"render_modes": modes, "render_fps": self.env.control_hz}
        self.render_mode = render_mode
        self.render_size = render_size
        self._images = _has_images(self.env)
        self._renderer = _FrameRenderer(self.env.render_image, False) if self._images else None
        self._state: State | None = None
        self._done = False
        self._task: str | None = None
        # what the last returned observation shows, for render()
        self._shown: dict[str, Any] = {}

    # -- helpers --
    def _frame(self, physics: Any) -> np.ndarray:
        size = int(self.env.image_size)
        return _check_frames(self._renderer(physics), (size, size, 3), self.env)

    def _observation(
        self, obs: np.ndarray, goal: np.ndarray, physics: Any
    ) -> dict[str, np.ndarray]:
        out = {STATE_KEY: np.asarray(obs, np.float32)}
        if self.env.goal_dim > 0:
            out[GOAL_KEY] = np.asarray(goal, np.float32)
        if self._images:
            out[image_key(self.env)] = self._frame(physics)
        self._shown = {"obs": out[STATE_KEY], "goal": np.asarray(goal), "physics": physics}
        return out

    def _info(self, success: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"is_success": bool(success)}
        if self._task is not None:
            info["task"] = self._task
        return info

    # -- Gymnasium API --
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode. ``options`` are accepted for API compatibility and must be empty."""
        super().reset(seed=seed)
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)}")
        p = self._programs
        if seed is not None or self._state is None:
            self._state = p.reset_from_seed(_seed32(self.np_random))
        elif self._done:
            # The env already drew the next episode when the last one ended: play that one,
            # as the vector env does.
            self._state = p.begin(self._state)
        else:
            self._state = p.reset_from_key(self._state.key)
        self._done = False
        state = self._state
        if _has_instruction(self.env):
            self._task = str(self.env.instruction(state))
        obs, goal, success = jax.device_get((state.obs, state.goal, state.success))
        return self._observation(obs, goal, state.physics), self._info(success)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Advance one control step; on the episode's last step returns its final observation."""
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self._done:
            raise gym.error.ResetNeeded(
                "the episode has ended (terminated or truncated); call reset() before step()"
            )
        action = _as_actions(action, self.action_space.shape)
        self._state, host, frame_physics = self._programs.step(self._state, action)
        host = jax.device_get(host)
        terminated, truncated = bool(host.terminated), bool(host.truncated)
        self._done = terminated or truncated
        # ``final_obs`` equals ``obs`` except on the step that ended an episode, where ``obs``
        # is already the next episode's start: report the ended episode's last observation.
        physics = frame_physics if self._images else None
        obs = self._observation(host.final_obs, host.final_goal, physics)
        return obs, float(host.reward), terminated, truncated, self._info(host.success)

    def render(self) -> np.ndarray | None:
        """The last returned observation as an RGB ``uint8 [H, W, 3]`` frame."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        if not self._shown:
            raise gym.error.ResetNeeded("call reset() before render()")
        if callable(getattr(self.env, "render_image", None)):
            physics = self._shown["physics"]
            if physics is None:
                raise RuntimeError("no physics state to render; call reset() first")
            if self._renderer is None:
                self._renderer = _FrameRenderer(self.env.render_image, False)
            return np.asarray(self._renderer(physics), np.uint8)
        return _maze_frame(self.env, self._shown["obs"], self._shown["goal"], self.render_size)


# ---- vector env -------------------------------------------------------------------------
class GymnasiumVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of an anyskill env stepped as one ``jit(vmap(env.step))`` call.

    Autoreset mode ``SAME_STEP`` (``metadata["autoreset_mode"]``): on the step an episode
    ends, the observation is the next episode's first one, ``info["final_obs"][i]`` (an object
    array, ``None`` where no episode ended; mask ``info["_final_obs"]``) the ended episode's
    last observation and ``info["final_info"]`` its step info — the layout of Gymnasium's
    ``SyncVectorEnv`` in the same mode, so the two agree value for value.

    ``reset(seed=s)`` seeds env ``i`` with ``s + i`` exactly as ``GymnasiumEnv.reset(seed=s + i)``
    would; a list gives one seed per env. ``options={"reset_mask": mask}`` resets only the
    masked envs.
    """

    def __init__(
        self,
        env: Env | str,
        num_envs: int,
        render_mode: str | None = None,
        render_size: int = 256,
        max_episode_steps: int | None = None,
        **overrides: Any,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env = _resolve_env(env, max_episode_steps, overrides)
        self.num_envs = num_envs
        self._programs = _programs(self.env)
        self.single_observation_space = observation_space(self.env)
        self.single_action_space = spaces.Box(-1.0, 1.0, (self.env.action_dim,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        modes = _render_modes(self.env, render_mode)
        self.metadata = {
            "autoreset_mode": AutoresetMode.SAME_STEP,
            "render_modes": modes,
            "render_fps": self.env.control_hz,
        }
        self.render_mode = render_mode
        self.render_size = render_size
        self._images = _has_images(self.env)
        self._renderer = _FrameRenderer(self.env.render_image, True) if self._images else None
        self._state: State | None = None
        self._tasks: np.ndarray | None = None
        self._shown: dict[str, Any] = {}

    # -- helpers --
    def _frames(self, physics: Any) -> np.ndarray:
        size = int(self.env.image_size)
        return _check_frames(self._renderer(physics), (self.num_envs, size, size, 3), self.env)

    def _observations(
        self, obs: np.ndarray, goal: np.ndarray, physics: Any
    ) -> dict[str, np.ndarray]:
        out = {STATE_KEY: np.asarray(obs, np.float32)}
        if self.env.goal_dim > 0:
            out[GOAL_KEY] = np.asarray(goal, np.float32)
        if self._images:
            out[image_key(self.env)] = self._frames(physics)
        self._shown = {"obs": out[STATE_KEY], "goal": np.asarray(goal), "physics": physics}
        return out

    def _instructions(self, state: State, which: np.ndarray) -> None:
        """Refresh the instruction of the envs in ``which`` (episodes that just started)."""
        if not _has_instruction(self.env):
            return
        if self._tasks is None:
            self._tasks = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(which):
            self._tasks[i] = str(self.env.instruction(jax.tree.map(lambda x, i=i: x[i], state)))

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, int | np.integer):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for num_envs={self.num_envs}")
        return seeds

    # -- Gymnasium API --
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset all envs (or those in ``options["reset_mask"]``)."""
        super().reset(seed=seed if isinstance(seed, int | np.integer) else None)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if options:
            raise ValueError(
                f"{type(self).__name__}.reset takes no options but reset_mask, got {sorted(options)}"
            )
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(
                    f"options['reset_mask'] must be a bool array of shape ({self.num_envs},) with "
                    f"at least one True, got {mask.dtype} {mask.shape}"
                )
        if mask is None or self._state is None:  # the first reset resets every env
            mask = np.ones(self.num_envs, bool)
        p = self._programs
        seeds = self._seeds(seed)
        if self._state is not None and all(s is None for s in seeds):
            fresh = p.vreset_from_key(self._state.key)  # continue each env's own stream
        else:
            # A seeded env gets the key GymnasiumEnv.reset(seed=s) would; an unseeded one
            # draws from this env's np_random (or, after a first reset, its own stream).
            drawn = [
                _seed32(gym.utils.seeding.np_random(s)[0] if s is not None else self.np_random)
                for s in seeds
            ]
            fresh = p.vreset_from_seed(np.asarray(drawn, np.uint32))
            if self._state is not None:
                unseeded = np.array([s is None for s in seeds])
                fresh = p.select(unseeded, p.vreset_from_key(self._state.key), fresh)
        self._state = (
            fresh if self._state is None or mask.all() else p.select(mask, fresh, self._state)
        )
        self._instructions(self._state, mask)
        obs, goal, success = jax.device_get(
            (self._state.obs, self._state.goal, self._state.success)
        )
        # Like SyncVectorEnv: info values only for the envs that reset (the rest False/None).
        infos: dict[str, Any] = {
            "is_success": np.where(mask, np.asarray(success, bool), False),
            "_is_success": mask.copy(),
        }
        if self._tasks is not None:
            infos["task"], infos["_task"] = np.where(mask, self._tasks, None), mask.copy()
        return self._observations(obs, goal, self._state.physics), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env; envs whose episode ended are already reset (SAME_STEP)."""
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        actions = _as_actions(actions, self.action_space.shape)
        self._state, host, frame_physics = self._programs.vstep(self._state, actions)
        host = jax.device_get(host)
        terminated = np.asarray(host.terminated, bool)
        truncated = np.asarray(host.truncated, bool)
        done = terminated | truncated
        ended_tasks = None if self._tasks is None else self._tasks.copy()
        if done.any():
            self._instructions(self._state, done)
        obs = self._observations(host.obs, host.goal, self._state.physics)
        ones = np.ones(self.num_envs, bool)
        infos: dict[str, Any] = {
            # for an env that reset on this step, its reset info (Gymnasium's SAME_STEP)
            "is_success": np.where(done, host.next_success, host.success).astype(bool),
            "_is_success": ones,
        }
        if self._tasks is not None:
            infos["task"], infos["_task"] = self._tasks.copy(), ones.copy()
        if done.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            frames = self._frames(frame_physics) if self._images else None
            for i in np.flatnonzero(done):
                item = {STATE_KEY: np.asarray(host.final_obs[i], np.float32)}
                if self.env.goal_dim > 0:
                    item[GOAL_KEY] = np.asarray(host.final_goal[i], np.float32)
                if frames is not None:
                    item[image_key(self.env)] = frames[i]
                final_obs[i] = item
            final_info: dict[str, Any] = {
                "is_success": np.where(done, host.success, False).astype(bool),
                "_is_success": done.copy(),
            }
            if ended_tasks is not None:
                final_info["task"] = np.where(done, ended_tasks, None)
                final_info["_task"] = done.copy()
            infos.update(
                final_obs=final_obs,
                _final_obs=done.copy(),
                final_info=final_info,
                _final_info=done.copy(),
            )
        rewards = np.asarray(host.reward, np.float64)
        return obs, rewards, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One RGB frame per env of the last returned observations."""
        if self.render_mode is None:
            gym.logger.warn("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        if not self._shown:
            raise gym.error.ResetNeeded("call reset() before render()")
        if callable(getattr(self.env, "render_image", None)):
            if self._renderer is None:
                self._renderer = _FrameRenderer(self.env.render_image, True)
            return tuple(np.asarray(self._renderer(self._shown["physics"]), np.uint8))
        obs, goal = self._shown["obs"], self._shown["goal"]
        return tuple(
            _maze_frame(self.env, obs[i], goal[i], self.render_size) for i in range(self.num_envs)
        )


# ---- registration -----------------------------------------------------------------------
def gymnasium_id(name: str, namespace: str = "anyskill") -> str:
    """The Gymnasium id of a registered anyskill env: ``anyskill/pointmaze-u-v0``."""
    return f"{namespace}/{name}-v0"


def _make_registered(env: str, **kwargs: Any) -> GymnasiumEnv:
    """``gymnasium.make``'s entry point for ``anyskill/<name>-v0``.

    ``gymnasium.make`` ends episodes with its ``TimeLimit`` wrapper (at the spec's
    ``max_episode_steps`` or the one given to ``make``) and does not pass that limit on, so
    the anyskill env's own clock is switched off here: left on, it would end every episode at
    the env's default length and a longer ``max_episode_steps`` would be ignored. An explicit
    ``episode_length=`` override keeps the env's clock (the shorter of the two ends episodes).
    """
    if "episode_length" not in kwargs:
        kwargs.setdefault("max_episode_steps", NO_LIMIT)
    return GymnasiumEnv(env, **kwargs)


_make_registered.metadata = GymnasiumEnv.metadata  # read by gymnasium.make for render modes


def register_gymnasium_envs(
    names: Iterable[str] | None = None, namespace: str = "anyskill"
) -> list[str]:
    """Register anyskill envs with Gymnasium (``gymnasium.make`` and ``gymnasium.make_vec``).

    Importing this module already registers every env of :data:`anyskill.envs.REGISTRY` under
    ``anyskill``; call this for envs added to the registry later or for another namespace.
    Idempotent; ``names`` defaults to every env in the registry. Returns the ids, e.g.
    ``["anyskill/pointmaze-u-v0", ...]``. ``make_vec`` uses :class:`GymnasiumVectorEnv` (one
    jitted vmap) unless a vectorization mode is given. The spec's ``max_episode_steps`` is the
    env's ``episode_length``; a different one given to ``make``/``make_vec`` is honoured.
    """
    from anyskill.names import unknown_name

    ids = []
    for name in sorted(REGISTRY) if names is None else list(names):
        if name not in REGISTRY:
            raise unknown_name("env", name, REGISTRY)
        env_id = gymnasium_id(name, namespace)
        ids.append(env_id)
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=f"{__name__}:_make_registered",
            vector_entry_point=f"{__name__}:GymnasiumVectorEnv",
            max_episode_steps=make(name).episode_length,
            kwargs={"env": name},
        )
    return ids


# Registered on import, Gymnasium's convention: ``gymnasium.make("module:id")`` imports the
# module and expects that to register the id (Gymnasium 1.x loads no plugin entry points).
register_gymnasium_envs()


__all__ = [
    "GymnasiumEnv",
    "GymnasiumVectorEnv",
    "observation_space",
    "image_key",
    "gymnasium_id",
    "register_gymnasium_envs",
    "with_episode_length",
    "NO_LIMIT",
    "STATE_KEY",
    "GOAL_KEY",
    "IMAGE_KEY_PREFIX",
]
