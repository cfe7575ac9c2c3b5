"""The env side of a rollout: a batch of envs that offers named observation fields and
executes action chunks.

Two kinds, one interface (:class:`BatchEnv`):

* :class:`JaxBatchEnv` — a pure-JAX anyskill :class:`~anyskill.envs.base.Env`, ``B`` copies
  stepped as ``jit(vmap(step))`` inside a jitted ``lax.scan`` per chunk. It offers
  ``observation/state`` (``State.obs``), ``observation/goal`` (``State.goal``),
  ``observation/image`` (``env.render_image`` at the size the policy declares, rendered only
  when the policy asks for it), ``prompt`` (``env.instruction``) and the *privileged*
  :data:`ENV_STATE` (the simulator's ``State`` itself, for scripted experts; a real robot
  has no such field, so a policy that reads it cannot be served).
* :class:`HostBatchEnv` — one host-side (numpy / Gymnasium) adapter env following the
  contract of :mod:`anyskill.envs.adapters.evaluation`, stepped from Python, one episode at a
  time. Its LeRobot-named observations are offered under their own names and under the
  policy field names: ``observation.state`` -> ``observation/state``, ``observation.goal`` ->
  ``observation/goal``, the first ``observation.images.*`` -> ``observation/image``,
  ``info["task"]`` -> ``prompt`` (and ``task``).

A policy reads only the fields its spec declares; :func:`check_inputs` refuses a policy that
declares a field the env does not offer (or offers with another shape or dtype) in one error
naming the field, before anything is compiled.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.policies.base import GOAL, IMAGE, PROMPT, STATE, InputSpec, ObservationError
from anyskill.rollout.correctors import goal_distance

ENV_STATE = "env/state"
"""Privileged field: the simulator's :class:`~anyskill.envs.base.State` (a pytree of ``[B,
...]`` device arrays), offered by :class:`JaxBatchEnv` only. Declare it with
:data:`ENV_STATE_SPEC`."""
ENV_STATE_DTYPE = "env_state"
#: the input spec of the privileged env state
ENV_STATE_SPEC = InputSpec(ENV_STATE, (), ENV_STATE_DTYPE, "the simulator's state (privileged)")
#: the host adapters' field names (LeRobot features) and the instruction's key in ``info``
HOST_STATE, HOST_GOAL, HOST_IMAGE_PREFIX, HOST_TASK = (
    "observation.state",
    "observation.goal",
    "observation.images.",
    "task",
)
#: ``info`` key of an adapter env's own distance to its goal (what the stall trigger watches
#: when the goal is not an observation, e.g. PushT's block pose against the target's)
HOST_GOAL_DISTANCE = "goal_distance"
ANY = -1
"""A dimension of an offered field that takes any size (a JAX env renders its camera at the
size the policy asks for)."""


def check_inputs(spec: Any, offered: Mapping[str, InputSpec], env_name: str) -> None:
    """Refuse a policy spec reading a field the env does not offer as declared: one
    :class:`~anyskill.policies.base.ObservationError` naming the first such field."""
    for s in spec.inputs:
        o = offered.get(s.name)
        where = f"policy {spec.name!r} reads {s.name!r}"
        if o is None:
            raise ObservationError(
                s.name,
                f"{where}, which {env_name} does not offer; it offers {sorted(offered)}",
            )
        if (s.dtype in ("str", ENV_STATE_DTYPE) or o.dtype in ("str", ENV_STATE_DTYPE)) and (
            s.dtype != o.dtype
        ):
            raise ObservationError(s.name, f"{where} as {s.dtype}; {env_name} offers {o.dtype}")
        if s.dtype in ("str", ENV_STATE_DTYPE):
            continue
        fits = len(s.shape) == len(o.shape) and all(
            b == ANY or a == b for a, b in zip(s.shape, o.shape, strict=True)
        )
        if not fits:
            want = tuple("any" if d == ANY else d for d in o.shape)
            raise ObservationError(
                s.name, f"{where} of shape {tuple(s.shape)}; {env_name} offers shape {want}"
            )
        if np.dtype(s.dtype) != np.dtype(o.dtype):
            raise ObservationError(s.name, f"{where} as {s.dtype}; {env_name} offers {o.dtype}")


class BatchEnv(abc.ABC):
    """``B`` envs run together by :func:`anyskill.rollout.rollout` (see the module doc).

    The rollout holds an opaque *carry* per wave of envs; it reads ``carry.done``,
    ``carry.success``, ``carry.steps`` and ``carry.left`` (``[B]`` arrays) and sets ``left``
    (correction steps left per env)."""

    name: str
    #: most envs run at once (None: any number)
    max_parallel: int | None = None
    #: steps after which every episode has ended (None: the env's own time limit decides)
    horizon: int | None

    @abc.abstractmethod
    def offered(self) -> dict[str, InputSpec]:
        """The observation fields this env offers."""

    @abc.abstractmethod
    def reset(self, episodes: np.ndarray, keys: jax.Array) -> Any:
        """Start episodes ``episodes`` (indices in the rollout) from reset keys ``keys``
        (``[B]``); returns the carry."""

    @abc.abstractmethod
    def observe(self, carry: Any, inputs: tuple[InputSpec, ...]) -> dict[str, Any]:
        """The fields ``inputs`` of the current observations, as a policy ``Batch``."""

    @abc.abstractmethod
    def execute(
        self,
        carry: Any,
        plan: np.ndarray | None,
        *,
        policy_fn: Any = None,
        policy_keys: jax.Array | None = None,
        actor: Any = None,
        actor_keys: jax.Array | None = None,
        record_images: int = 0,
        record_env_state: bool = False,
    ) -> tuple[Any, dict[str, np.ndarray]]:
        """Execute ``plan`` (``[B, R, A]``) — or ``R`` steps of the JAX step policy
        ``policy_fn(state, key)`` with per-step keys ``policy_keys`` ``[R, B]`` — with the
        JAX ``actor`` acting where ``carry.left > 0`` (keys ``actor_keys`` ``[R, B]``).
        Returns the new carry and the frames, each ``[R', B, ...]`` (``R' <= R`` for host
        envs, which stop recording once their episode ended), with key ``done`` (the episode
        had ended before the frame) and the :class:`~anyskill.rollout.Episodes` fields."""

    @abc.abstractmethod
    def goal_distance(self, carry: Any) -> np.ndarray | None:
        """``[B]`` distance to the goal (for the stall trigger), or None without a goal."""

    @abc.abstractmethod
    def tasks(self, carry: Any) -> list[str]:
        """The ``B`` current instructions."""

    def families(self, carry: Any) -> list[str] | None:
        """The ``B`` current task family names, or None (no families)."""
        return None

    def final_state(self, carry: Any) -> np.ndarray:
        """``[B, obs_dim]``: each episode's last observation (see ``Episodes.final_state``)."""
        return np.asarray(carry.final_obs)

    def frame(self, carry: Any, size: int) -> np.ndarray:
        """``[S, S, 3]`` uint8 view of env 0 (what a person correcting it sees)."""
        raise ValueError(f"{self.name} cannot show a camera view to a person")


# ---- pure-JAX envs --------------------------------------------------------------------------


class _ById:
    """Wraps an object for use as a static jit argument: compared by value when it is
    hashable (two ``ScriptedExpert(env, noise)`` of one env share their compiled programs),
    else by identity (envs may hold arrays)."""

    __slots__ = ("obj", "_hash")

    def __init__(self, obj: Any):
        self.obj = obj
        try:
            self._hash = hash(obj)
        except TypeError:
            self._hash = None

    def __hash__(self) -> int:
        return id(self.obj) if self._hash is None else self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ById):
            return False
        if other.obj is self.obj:
            return True
        if self._hash is None or other._hash != self._hash:
            return False
        try:
            return bool(other.obj == self.obj)
        except Exception:  # an ambiguous comparison (arrays): not the same program
            return False


@struct.dataclass
class Carry:
    """The state of a wave of ``B`` envs between chunks (device arrays)."""

    state: Any
    """The envs' :class:`~anyskill.envs.base.State` (``[B, ...]``)."""
    done: jax.Array
    """``[B]`` bool: the env's (first) episode has ended."""
    success: jax.Array
    """``[B]`` bool: it ended on a successful step."""
    steps: jax.Array
    """``[B]`` int32: steps taken in the episode."""
    left: jax.Array
    """``[B]`` int32: steps the corrector keeps control for."""
    final_obs: jax.Array
    """``[B, obs_dim]``: the episode's latest observation (its last once it ended)."""


@functools.partial(jax.jit, static_argnums=0)
def _reset(env: _ById, keys: jax.Array) -> Carry:
    state = jax.vmap(env.obj.reset)(keys)
    n = keys.shape[0]
    zeros = jnp.zeros(n, bool)
    return Carry(state, zeros, zeros, jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32), state.obs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _render(env: _ById, size: int, physics: Any) -> jax.Array:
    return jax.vmap(lambda p: env.obj.render_image(p, size))(physics)


@functools.partial(jax.jit, static_argnums=0)
def _distance(env: _ById, state: Any) -> jax.Array:
    return goal_distance(env.obj, state.obs, state.goal)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _execute(
    env: _ById,
    policy_fn: _ById | None,
    actor: _ById | None,
    record_images: int,
    record_env_state: bool,
    carry: Carry,
    plan: jax.Array | None,
    policy_keys: jax.Array | None,
    actor_keys: jax.Array | None,
):
    """One chunk: ``R`` steps of every env in one ``lax.scan`` (the policy's network is not
    in here: XLA compiles a transformer sampler nested in the env's scan very slowly)."""
    n = carry.done.shape[0]
    length = plan.shape[1] if plan is not None else policy_keys.shape[0]

    def step(c: Carry, inp):
        a_plan, k_pol, k_act = inp
        state = c.state
        if policy_fn is not None:  # a JAX step policy of the env state: one action per step
            a_plan = jax.vmap(policy_fn.obj)(state, k_pol)
        correcting = c.left > 0
        if actor is not None:
            a = jnp.where(correcting[:, None], jax.vmap(actor.obj)(state, k_act), a_plan)
        else:
            a = a_plan
        img = (
            jax.vmap(lambda p: env.obj.render_image(p, record_images))(state.physics)
            if record_images
            else jnp.zeros((n,), jnp.uint8)
        )
        nxt = jax.vmap(env.obj.step)(state, a)
        frame = {
            "state": state.obs,
            "goal": state.goal,
            "action": a,
            "intervention": correcting & ~c.done,
            "done": c.done,
            "reward": nxt.reward,
            "images": img,
        }
        if record_env_state:
            frame["env_state"] = state
        ended = nxt.terminated | nxt.truncated
        new = Carry(
            state=nxt,
            done=c.done | ended,
            success=jnp.where(c.done, c.success, nxt.success & ended),
            steps=c.steps + (~c.done).astype(jnp.int32),
            left=jnp.maximum(c.left - 1, 0),
            final_obs=jnp.where(c.done[:, None], c.final_obs, nxt.final_obs),
        )
        return new, frame

    xs = (None if plan is None else jnp.swapaxes(plan, 0, 1), policy_keys, actor_keys)
    return jax.lax.scan(step, carry, xs, length=length)


class JaxBatchEnv(BatchEnv):
    """A pure-JAX env run as ``jit(vmap(...))`` (see the module doc). Build it once and reuse
    it: its compiled programs are kept per env object."""

    def __init__(self, env: Any, horizon: int | None = None):
        if not hasattr(env, "reset") or not hasattr(env, "step"):
            raise TypeError(f"JaxBatchEnv needs an anyskill Env, got {type(env).__name__}")
        self.env = env
        self._env = _ById(env)
        self.name = getattr(env, "name", type(env).__name__)
        self.horizon = int(horizon if horizon is not None else env.episode_length)
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 step, got {self.horizon}")

    def offered(self) -> dict[str, InputSpec]:
        env = self.env
        out = {
            STATE: InputSpec(STATE, (env.obs_dim,), "float32", "env observation"),
            GOAL: InputSpec(GOAL, (env.goal_dim,), "float32", "commanded goal"),
            ENV_STATE: ENV_STATE_SPEC,
        }
        if callable(getattr(env, "render_image", None)):
            out[IMAGE] = InputSpec(IMAGE, (ANY, ANY, 3), "uint8", "camera, any size")
        if callable(getattr(env, "instruction", None)):
            out[PROMPT] = InputSpec(PROMPT, (), "str", "instruction")
        return out

    def reset(self, episodes: np.ndarray, keys: jax.Array) -> Carry:
        return _reset(self._env, keys)

    def observe(self, carry: Carry, inputs: tuple[InputSpec, ...]) -> dict[str, Any]:
        state = carry.state
        out: dict[str, Any] = {}
        for s in inputs:
            if s.name == STATE:
                out[s.name] = np.asarray(state.obs)
            elif s.name == GOAL:
                out[s.name] = np.asarray(state.goal)
            elif s.name == IMAGE:
                out[s.name] = np.asarray(_render(self._env, int(s.shape[0]), state.physics))
            elif s.name == PROMPT:
                out[s.name] = self.tasks(carry)
            elif s.name == ENV_STATE:
                out[s.name] = state
        return out

    def execute(
        self,
        carry: Carry,
        plan: np.ndarray | None,
        *,
        policy_fn: Any = None,
        policy_keys: jax.Array | None = None,
        actor: Any = None,
        actor_keys: jax.Array | None = None,
        record_images: int = 0,
        record_env_state: bool = False,
    ) -> tuple[Carry, dict[str, Any]]:
        return _execute(
            self._env,
            None if policy_fn is None else _ById(policy_fn),
            None if actor is None else _ById(actor),
            int(record_images),
            bool(record_env_state),
            carry,
            None if plan is None else jnp.asarray(plan),
            policy_keys,
            actor_keys,
        )

    def goal_distance(self, carry: Carry) -> np.ndarray | None:
        if self.env.goal_dim == 0:
            return None
        return np.asarray(_distance(self._env, carry.state))

    def tasks(self, carry: Carry) -> list[str]:
        from anyskill.envs.tabletop.env import Tabletop

        if not callable(getattr(self.env, "instruction", None)):
            return [""] * int(carry.done.shape[0])
        if isinstance(self.env, Tabletop):  # asked every chunk: memoised per task row
            rows = np.asarray(carry.state.physics.task)
            return [self._instruction(row) for row in rows.reshape(len(rows), -1)]
        texts = self.env.instruction(carry.state)
        return [texts] if isinstance(texts, str) else list(texts)

    def _instruction(self, row: np.ndarray) -> str:
        memo = self.__dict__.setdefault("_instructions", {})
        key = row.tobytes()
        if key not in memo:
            from anyskill.envs.tabletop import tasks as T

            memo[key] = T.instruction(row)
        return memo[key]

    def families(self, carry: Carry) -> list[str] | None:
        from anyskill.envs.tabletop import tasks as T
        from anyskill.envs.tabletop.env import Tabletop

        if not isinstance(self.env, Tabletop):
            return None
        rows = np.asarray(carry.state.physics.task).reshape(-1, T.ROW_WIDTH)
        return [T.family_name(int(f)) for f in rows[:, T.FAMILY]]

    def frame(self, carry: Carry, size: int) -> np.ndarray:
        if not callable(getattr(self.env, "render_image", None)):
            raise ValueError(f"{self.name} has no camera (render_image) to show a person")
        return np.asarray(_render(self._env, int(size), carry.state.physics))[0]


# ---- host (numpy / Gymnasium) adapter envs --------------------------------------------------


@dataclasses.dataclass
class HostCarry:
    """One host env's episode in progress (numpy, batch of one)."""

    obs: dict[str, Any]
    info: dict[str, Any]
    done: np.ndarray
    success: np.ndarray
    steps: np.ndarray
    left: np.ndarray
    final_obs: np.ndarray


class HostBatchEnv(BatchEnv):
    """One adapter env (``reset(seed=, options=) -> (obs, info)``, ``step(action) -> (obs,
    reward, terminated, truncated, info)``, ``action_space``, ``info["is_success"]``), its
    episodes run one at a time: episode ``i`` starts with ``env.reset(seed=seed + i,
    options=reset_options)``, so each is reproducible on its own. Actions are checked
    against ``action_space`` and clipped to its bounds (OGBench's protocol)."""

    max_parallel = 1

    def __init__(
        self,
        env: Any,
        seed: int = 0,
        reset_options: Mapping[str, Any] | None = None,
        max_steps: int | None = None,
    ):
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.env = env
        self.name = type(env).__name__
        self.seed = int(seed)
        self.options = dict(reset_options) if reset_options is not None else None
        self.horizon = max_steps
        self._probe: tuple[int, dict, dict] | None = None
        self._offered: dict[str, InputSpec] | None = None

    def _start(self, episode: int) -> tuple[dict, dict]:
        if self._probe is not None and self._probe[0] == episode:
            _, obs, info = self._probe
            self._probe = None
            return obs, info
        self._probe = None
        obs, info = self.env.reset(seed=self.seed + int(episode), options=self.options)
        return dict(obs), dict(info)

    def offered(self) -> dict[str, InputSpec]:
        if self._offered is None:
            # What an adapter offers is known from an observation and its info (the
            # instruction travels in info); episode 0's reset is kept for its first use.
            obs, info = self.env.reset(seed=self.seed, options=self.options)
            self._probe = (0, dict(obs), dict(info))
            self._offered = _host_fields(dict(obs), dict(info))
        return dict(self._offered)

    def reset(self, episodes: np.ndarray, keys: jax.Array) -> HostCarry:
        if len(episodes) != 1:
            raise ValueError(f"{self.name} runs one episode at a time, got {len(episodes)}")
        obs, info = self._start(int(episodes[0]))
        one = np.zeros(1, bool)
        state = np.asarray(obs.get(HOST_STATE, np.zeros(0)), np.float32)
        return HostCarry(
            obs, info, one, one.copy(), np.zeros(1, int), np.zeros(1, int), state[None]
        )

    def observe(self, carry: HostCarry, inputs: tuple[InputSpec, ...]) -> dict[str, Any]:
        fields = _host_values(carry.obs, carry.info)
        return {
            s.name: [fields[s.name]] if s.dtype == "str" else np.asarray(fields[s.name])[None]
            for s in inputs
        }

    def execute(
        self,
        carry: HostCarry,
        plan: np.ndarray | None,
        *,
        policy_fn: Any = None,
        policy_keys: jax.Array | None = None,
        actor: Any = None,
        actor_keys: jax.Array | None = None,
        record_images: int = 0,
        record_env_state: bool = False,
    ) -> tuple[HostCarry, dict[str, Any]]:
        from anyskill.envs.adapters.evaluation import check_action
        from anyskill.policies.base import Policy

        if (
            policy_fn is not None
            or record_env_state
            or not (actor is None or isinstance(actor, Policy))
        ):
            raise ValueError(
                f"{self.name} is a host env: it has no simulator state for JAX step "
                "policies, JAX correctors (a corrector's actor here is a Policy of the "
                "observations) or record_env_state"
            )
        frames: dict[str, list] = {k: [] for k in _FRAME_KEYS}
        if record_images:
            frames["images"] = []
        for j, a in enumerate(np.asarray(plan)[0]):
            if carry.done[0]:
                break
            if actor is not None and carry.left[0] > 0:  # the corrector acts on this step
                k = actor_keys[j, 0] if actor_keys is not None else jax.random.key(j)
                a = np.asarray(actor.act(self.observe(carry, actor.spec.inputs), k))[0, 0]
            action = check_action(a, self.env.action_space)
            obs = carry.obs
            frames["state"].append(np.asarray(obs.get(HOST_STATE, np.zeros(0)), np.float32))
            frames["goal"].append(np.asarray(obs.get(HOST_GOAL, np.zeros(0)), np.float32))
            frames["action"].append(np.asarray(action, np.float32).reshape(-1))
            frames["intervention"].append(bool(carry.left[0] > 0))
            frames["done"].append(False)
            if record_images:
                frames["images"].append(np.asarray(_host_values(obs, carry.info)[IMAGE]))
            obs, reward, terminated, truncated, info = self.env.step(action)
            frames["reward"].append(float(reward))
            carry.steps[0] += 1
            carry.left[0] = max(carry.left[0] - 1, 0)
            carry.obs, carry.info = dict(obs), dict(info)
            carry.final_obs = np.asarray(obs.get(HOST_STATE, np.zeros(0)), np.float32)[None]
            over = self.horizon is not None and carry.steps[0] >= self.horizon
            if bool(terminated or truncated) or over:
                if "is_success" not in info:
                    raise KeyError(
                        f"{self.name}.step returned no info['is_success'] (info keys: "
                        f"{sorted(info)}); rollouts of host envs need adapter envs from "
                        "anyskill.envs.adapters"
                    )
                carry.done[0] = True
                carry.success[0] = bool(info["is_success"])
        out = {k: np.asarray(v)[:, None] if v else np.zeros((0, 1)) for k, v in frames.items()}
        out["reward"] = out["reward"].astype(np.float64)
        return carry, out

    def goal_distance(self, carry: HostCarry) -> np.ndarray | None:
        if HOST_GOAL_DISTANCE in carry.info:  # the env measures it (e.g. PushT's block pose)
            return np.array([float(carry.info[HOST_GOAL_DISTANCE])])
        if HOST_GOAL not in carry.obs:
            return None
        s = np.asarray(carry.obs[HOST_STATE], np.float32)
        g = np.asarray(carry.obs[HOST_GOAL], np.float32)
        if s.shape != g.shape:  # the adapter does not say which part of the state is the goal's
            return None
        return np.linalg.norm(s - g)[None]

    def tasks(self, carry: HostCarry) -> list[str]:
        return [str(carry.info.get(HOST_TASK, ""))]

    def frame(self, carry: HostCarry, size: int) -> np.ndarray:
        """The observation's first camera, else the env's own ``render()`` when it renders
        RGB arrays (gym-pusht does), resized to ``size`` pixels (nearest pixel)."""
        values = _host_values(carry.obs, carry.info)
        if IMAGE in values:
            img = np.asarray(values[IMAGE])
        elif getattr(self.env, "render_mode", None) == "rgb_array":
            try:
                img = self.env.render()
            except RuntimeError as e:  # e.g. a MuJoCo env built without a renderer
                raise ValueError(f"{self.name} cannot render a view for a person: {e}") from e
            if img is None:
                raise ValueError(f"{self.name}.render() returned nothing to show a person")
            img = np.asarray(img)
        else:
            raise ValueError(f"{self.name} has no camera and does not render to show a person")
        rows = np.arange(size) * img.shape[0] // size
        cols = np.arange(size) * img.shape[1] // size
        return np.ascontiguousarray(img[rows][:, cols, :3]).astype(np.uint8)


_FRAME_KEYS = ("state", "goal", "action", "intervention", "done", "reward")


def _host_values(obs: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
    """An adapter's observation under its own names and the policy field names."""
    out = dict(obs)
    if HOST_STATE in obs:
        out[STATE] = obs[HOST_STATE]
    if HOST_GOAL in obs:
        out[GOAL] = obs[HOST_GOAL]
    cameras = [k for k in obs if k.startswith(HOST_IMAGE_PREFIX)]
    if cameras:
        out[IMAGE] = obs[cameras[0]]
    if HOST_TASK in info:
        out[PROMPT] = out[HOST_TASK] = str(info[HOST_TASK])
    return out


def _host_fields(obs: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, InputSpec]:
    out = {}
    for name, value in _host_values(obs, info).items():
        if isinstance(value, str):
            out[name] = InputSpec(name, (), "str", "instruction")
        else:
            arr = np.asarray(value)
            out[name] = InputSpec(name, tuple(arr.shape), arr.dtype.name)
    return out


def as_batch_env(env: Any, horizon: int | None = None) -> BatchEnv:
    """``env`` as a :class:`BatchEnv`: itself if it is one, a :class:`JaxBatchEnv` for an
    anyskill Env, a :class:`HostBatchEnv` for a Gymnasium-style adapter env."""
    from anyskill.envs.base import Env

    if isinstance(env, BatchEnv):
        if horizon is not None and horizon != env.horizon:
            raise ValueError(
                f"horizon={horizon} differs from the batch env's {env.horizon}; build the "
                "batch env with it"
            )
        return env
    if isinstance(env, Env):
        return JaxBatchEnv(env, horizon)
    if hasattr(env, "action_space") and callable(getattr(env, "step", None)):
        return HostBatchEnv(env, max_steps=horizon)
    raise TypeError(
        f"cannot roll out {type(env).__name__}: give an anyskill Env, a Gymnasium-style "
        "adapter env (anyskill.envs.adapters) or a BatchEnv"
    )
