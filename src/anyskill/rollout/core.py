"""The one loop that steps envs with a policy.

Structure (what made the hand-written loops it replaces fast): small jitted pieces driven
from Python once per chunk — reset, observe, ``policy.act``, and one jitted ``lax.scan``
executing the chunk's ``replan_every`` actions with the corrector's actor inside — never the
policy's network inside the env's scan (XLA compiles a transformer sampler nested in a scan
very slowly). A :class:`~anyskill.rollout.policies.StatePolicy` (a scripted expert: a small
JAX function of the env state) does run inside the scan, a whole episode per program.

Keys. ``key`` is split into ``(reset, run, watch)``: env ``i`` starts from
``split(reset, num_envs)[i]``; chunk ``c`` of wave ``w`` has the plan key
``split(run, waves * n_plans)[w * n_plans + c]`` (``n_plans = ceil(horizon /
replan_every)``); ``watch`` draws which envs a corrector watches. Without a corrector the
policy acts with the plan key itself; with one, the plan key is split into the policy's and
the corrector's, whose actor draws step ``j``, env ``b`` from ``split(split(k, R)[j], B)[b]``.
:class:`EpisodeKeys` instead gives every episode its own reset and run keys (episode ``i``'s
chunk ``c`` acts with ``split(run[i], n_plans)[c]``), for results that do not depend on
which other episodes share the batch; its policies receive one key per env. Host envs
without a horizon draw plan keys with ``fold_in`` instead of ``split``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.policies.base import STATE, Policy
from anyskill.rollout.correctors import Boundary, Corrector, StepStatus
from anyskill.rollout.envs import BatchEnv, JaxBatchEnv, as_batch_env, check_inputs
from anyskill.rollout.episodes import Episodes, concat


@dataclasses.dataclass(frozen=True)
class EpisodeKeys:
    """One reset key and one run key per episode (see the module doc)."""

    reset: jax.Array
    """``[num_envs]`` keys: episode ``i`` starts from ``env.reset(reset[i])``."""
    run: jax.Array
    """``[num_envs]`` keys: the plan keys of episode ``i`` are ``split(run[i], n_plans)``."""
    watch: jax.Array | None = None
    """One key: which episodes a corrector watches (needed with a corrector)."""


def _typed(key: jax.Array) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


@functools.partial(jax.jit, static_argnames=("n", "steps", "corrected", "rows", "actor"))
def _derive(plan: jax.Array, n: int, steps: int, corrected: bool, rows: bool, actor: bool):
    """Keys of a chunk from its plan keys ``plan`` (``[P]``, or ``[P, n]`` one per env):
    ``(act [P] or [P, n], act rows [P, n] | None, actor steps [P, steps, n] | None)``."""
    per_env = plan.ndim == 2

    def two(k):
        return jax.random.split(k)

    if corrected:
        pairs = jax.vmap(jax.vmap(two))(plan) if per_env else jax.vmap(two)(plan)
        act, exe = pairs[..., 0], pairs[..., 1]
    else:
        act, exe = plan, None
    act_rows = None
    if rows:
        act_rows = act if per_env else jax.vmap(lambda k: jax.random.split(k, n))(act)
    actor_steps = None
    if actor and exe is not None:
        if per_env:
            per = jax.vmap(jax.vmap(lambda k: jax.random.split(k, steps)))(exe)  # [P, n, R]
            actor_steps = jnp.swapaxes(per, 1, 2)
        else:
            actor_steps = jax.vmap(
                lambda k: jax.vmap(lambda s: jax.random.split(s, n))(jax.random.split(k, steps))
            )(exe)
    return act, act_rows, actor_steps


@functools.partial(jax.jit, static_argnames=("count",))
def _split(key: jax.Array, count: int) -> jax.Array:
    return jax.random.split(key, count)


@functools.partial(jax.jit, static_argnames=("count",))
def _split_rows(keys: jax.Array, count: int) -> jax.Array:
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, count))(keys), 0, 1)


def rollout(
    env: Any,
    policy: Any,
    key: jax.Array | EpisodeKeys,
    *,
    num_envs: int,
    replan_every: int | None = None,
    corrector: Corrector | None = None,
    record_images: int = 0,
    record_env_state: bool = False,
    on_episode: Callable[[Episodes], None] | None = None,
    parallel: int | None = None,
    skip: int = 0,
    horizon: int | None = None,
) -> Episodes | None:
    """Run ``num_envs`` episodes of ``env`` with ``policy``; returns them as :class:`Episodes`.

    Args:
      env: an anyskill :class:`~anyskill.envs.base.Env` (pure JAX), a host adapter env
        (Gymnasium API, see :mod:`anyskill.envs.adapters.evaluation`) or a prepared
        :class:`~anyskill.rollout.envs.BatchEnv` (reuse one to reuse its compiled programs).
      policy: a :class:`~anyskill.policies.base.Policy`; it sees only the fields its spec
        declares, and a field the env does not offer is refused before anything compiles.
        A policy with per-episode state (a hierarchical VLA's current subtask per row) may
        offer ``start_episodes(n)``: called before each wave's first ``act``.
      key: a PRNG key, or :class:`EpisodeKeys` (see the module doc).
      num_envs: episodes to run (one per env).
      replan_every: actions of each chunk executed before the policy is asked again
        (default: the spec's ``execute_horizon``, else its ``action_horizon``).
      corrector: who takes over failing episodes (:mod:`anyskill.rollout.correctors`);
        frames it acted on are flagged ``intervention``.
      record_images: also record camera frames of this size (0: none).
      record_env_state: also record the simulator's state of every frame (JAX envs).
      on_episode: called with each episode (an ``Episodes`` of one, cut to its length) once
        its wave of envs has finished — with ``parallel=1``, as soon as it ends.
      parallel: envs run at once (default all; host envs and a person: one).
      skip: do not run the first ``skip`` episodes (a resumed collection; whole waves only).
        Later episodes are the same as without ``skip``.
      horizon: steps after which episodes are cut short (default: the env's episode length).

    Returns:
      The episodes run (those from ``skip`` on), or None when ``skip >= num_envs``.
    """
    benv = as_batch_env(env, horizon)
    spec = policy.spec
    check_inputs(spec, benv.offered(), benv.name)
    if corrector is not None and isinstance(corrector.actor, Policy):
        if isinstance(benv, JaxBatchEnv):
            raise ValueError(
                f"{benv.name} is a pure-JAX env: its corrector's actor runs inside the jitted "
                "steps as a JAX function (state, key) -> action, not a Policy"
            )
        check_inputs(corrector.actor.spec, benv.offered(), benv.name)
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    r = replan_every or spec.execute_horizon or spec.action_horizon
    if not 1 <= r <= spec.action_horizon:
        raise ValueError(
            f"replan_every must be in 1..{spec.action_horizon} (the policy's action horizon), "
            f"got {r}"
        )
    person = corrector.person if corrector is not None else None
    parallel = num_envs if parallel is None else int(parallel)
    if person is not None and parallel != 1 and parallel != num_envs:
        raise ValueError(
            f"a person corrects one episode at a time: parallel must be 1, got {parallel}"
        )
    if person is not None or benv.max_parallel == 1:
        parallel = 1
    if benv.max_parallel is not None:
        parallel = min(parallel, benv.max_parallel)
    if not 1 <= parallel:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if skip % parallel:
        raise ValueError(f"skip ({skip}) must be a multiple of parallel ({parallel})")
    if record_env_state and not isinstance(benv, JaxBatchEnv):
        raise ValueError(f"record_env_state needs a pure-JAX env; {benv.name} is a host env")

    # keys (module doc)
    if isinstance(key, EpisodeKeys):
        reset_keys, run_keys = _typed(key.reset), _typed(key.run)
        if reset_keys.shape != (num_envs,) or run_keys.shape != (num_envs,):
            raise ValueError(
                f"EpisodeKeys need {num_envs} reset and run keys, got {reset_keys.shape} and "
                f"{run_keys.shape}"
            )
        watch_key = None if key.watch is None else _typed(key.watch)
        if corrector is not None and watch_key is None:
            raise ValueError("EpisodeKeys.watch is needed to draw the envs a corrector watches")
    else:
        k_reset, k_run, watch_key = _split(_typed(key), 3)
        reset_keys, run_keys = _split(k_reset, num_envs), k_run
    per_episode = isinstance(key, EpisodeKeys)
    watched = np.zeros(num_envs, bool)
    if corrector is not None:
        watched = np.array(jax.random.uniform(watch_key, (num_envs,)) < corrector.fraction)

    n_plans = None if benv.horizon is None else -(-benv.horizon // r)
    waves = -(-num_envs // parallel)
    fused = getattr(policy, "step_fn", None) if isinstance(benv, JaxBatchEnv) else None
    if fused is not None and (r != 1 or person is not None):
        fused = None  # stepped through ``act`` like any other policy
    all_plans = None
    if n_plans is not None:
        all_plans = (
            _split_rows(run_keys, n_plans) if per_episode else _split(run_keys, waves * n_plans)
        )
    run = _Run(
        benv=benv,
        policy=policy,
        r=r,
        corrector=corrector,
        record_images=int(record_images),
        record_env_state=bool(record_env_state),
        n_plans=n_plans,
        fused=fused,
        num_envs=num_envs,
    )
    parts = []
    # optional protocol method: each row of the next act() call starts a new episode
    start_episodes = getattr(policy, "start_episodes", None)
    for w in range(skip // parallel, waves):
        idx = np.arange(w * parallel, min((w + 1) * parallel, num_envs))
        if all_plans is None:  # host env without a horizon: plan keys drawn as needed
            base = run_keys[idx] if per_episode else jax.random.fold_in(run_keys, w)
            plans = None
        else:
            base = None
            plans = all_plans[:, idx] if per_episode else all_plans[w * n_plans : (w + 1) * n_plans]
        carry = benv.reset(idx, reset_keys[idx])
        if callable(start_episodes):  # a policy with per-episode state (a hierarchical VLA)
            start_episodes(len(idx))
        if person is not None:
            ep = run.with_person(carry, idx, plans, base, watched[idx], person)
        else:
            ep = run.wave(carry, plans, base, watched[idx], per_episode)
        if on_episode is not None:
            for i in range(len(idx)):
                on_episode(ep.take(i, int(ep.length[i])))
        parts.append(ep)
    return concat(parts) if parts else None


@dataclasses.dataclass
class _Run:
    benv: BatchEnv
    policy: Any
    r: int
    corrector: Corrector | None
    record_images: int
    record_env_state: bool
    n_plans: int | None
    fused: Any
    num_envs: int

    def _keys(self, plans, base, n: int, rows: bool, actor: bool) -> _WaveKeys:
        return _WaveKeys(plans, base, n, self.r, self.corrector is not None, rows, actor)

    def _episodes(self, carry, frames: list[dict], tasks, families) -> Episodes:
        def cat(name):
            return np.concatenate([np.asarray(f[name]) for f in frames], axis=0).swapaxes(0, 1)

        was_done = cat("done").astype(bool)
        env_state = None
        if self.record_env_state:
            # jnp: the state holds PRNG keys, which numpy cannot hold
            env_state = jax.tree.map(
                lambda *xs: jnp.swapaxes(jnp.concatenate(xs), 0, 1),
                *[f["env_state"] for f in frames],
            )
        return Episodes(
            state=cat("state"),
            goal=cat("goal"),
            action=cat("action"),
            intervention=cat("intervention").astype(bool),
            length=(~was_done).sum(1),
            success=np.asarray(carry.success).astype(bool),
            task=tasks,
            family=families,
            images=cat("images") if self.record_images else None,
            reward=cat("reward"),
            final_state=self.benv.final_state(carry),
            env_state=env_state,
        )

    def wave(self, carry, plans, base, watched: np.ndarray, per_episode: bool) -> Episodes:
        """A wave of envs, chunk by chunk, the corrector's JAX actor inside the chunks."""
        benv, corrector, r = self.benv, self.corrector, self.r
        n = len(watched)
        tasks, families = benv.tasks(carry), benv.families(carry)
        trigger_on = corrector is not None and bool(watched.any())
        # an actor that cannot be handed control (no env watched) is not compiled in
        actor = corrector.actor if trigger_on else None
        dists: list[np.ndarray] = []
        frames = []
        chunks = itertools.count() if self.n_plans is None else range(self.n_plans)
        # a step policy without a corrector runs a whole wave in one scan
        span = self.n_plans if (self.fused is not None and not trigger_on) else 1
        keys = self._keys(plans, base, n, rows=self.fused is not None, actor=actor is not None)
        for c in chunks:
            if c % span:
                continue
            count = min(span, self.n_plans - c) if self.n_plans is not None else 1
            act, rows, exec_keys = keys.chunk(c, count)
            obs = None
            if self.fused is None or trigger_on:
                obs = benv.observe(carry, self.policy.spec.inputs)
            if trigger_on:
                d = benv.goal_distance(carry)
                if d is not None:
                    dists.append(d)
                fire = np.asarray(corrector.trigger.fire(Boundary(obs, dists, r)), bool)
                fire = fire & watched & ~np.asarray(carry.done) & (np.asarray(carry.left) == 0)
                if fire.any():
                    left = np.where(fire, corrector.correction_steps, np.asarray(carry.left))
                    carry = _with_left(carry, left)
            if self.fused is not None:
                carry, out = benv.execute(
                    carry,
                    None,
                    policy_fn=self.fused,
                    policy_keys=rows,
                    actor=actor,
                    actor_keys=exec_keys,
                    record_images=self.record_images,
                    record_env_state=self.record_env_state,
                )
            else:
                chunk = np.asarray(self.policy.act(obs, act))
                self._check_chunk(chunk, n)
                carry, out = benv.execute(
                    carry,
                    chunk[:, :r],
                    actor=actor,
                    actor_keys=exec_keys,
                    record_images=self.record_images,
                    record_env_state=self.record_env_state,
                )
            frames.append(out)
            if bool(np.asarray(carry.done).all()):
                break
        return self._episodes(carry, frames, tasks, families)

    def with_person(self, carry, idx, plans, base, watched, person) -> Episodes:
        """One episode stepped from Python, a person watching (if it is watched) who can take
        control at any step, and is handed it when the trigger fires."""
        benv, corrector, r = self.benv, self.corrector, self.r
        tasks, families = benv.tasks(carry), benv.families(carry)
        episode = int(idx[0])
        person.begin_episode()
        state_inputs = tuple(v for k, v in benv.offered().items() if k == STATE)
        has_view = True
        keys = self._keys(plans, base, 1, rows=False, actor=False)
        dists: list[np.ndarray] = []
        frames = []
        left = 0
        t = 0
        chunks = itertools.count() if self.n_plans is None else range(self.n_plans)
        for c in chunks:
            if bool(np.asarray(carry.done)[0]):
                break
            act, _, _ = keys.chunk(c, 1)
            obs = benv.observe(carry, self.policy.spec.inputs)
            plan = np.asarray(self.policy.act(obs, act))
            self._check_chunk(plan, 1)
            if bool(watched[0]) and person.watching and left == 0 and not person.holding:
                d = benv.goal_distance(carry)
                if d is not None:
                    dists.append(d)
                if bool(np.asarray(corrector.trigger.fire(Boundary(obs, dists, r)), bool).any()):
                    left = corrector.correction_steps
                    person.take_over()
            for j in range(r):
                if bool(np.asarray(carry.done)[0]):
                    break
                watching = bool(watched[0]) and person.watching
                if watching:
                    person.read()
                    if person.handed_back:
                        left, person.handed_back = 0, False
                correcting = (person.holding or left > 0) and watching
                if correcting:
                    state = benv.observe(carry, state_inputs) if state_inputs else None
                    a = np.asarray(person.action(state), np.float32)
                else:
                    a = np.asarray(plan[0, j], np.float32)
                if watching:
                    d = benv.goal_distance(carry)
                    status = StepStatus(
                        episode,
                        self.num_envs,
                        t,
                        benv.horizon,
                        tasks[0],
                        correcting,
                        None if d is None else float(np.asarray(d)[0]),
                    )
                    frame = None
                    if has_view:
                        frame = _view(benv, carry, person.view_size)
                        has_view = frame is not None  # an env without a view: not asked again
                    person.present(frame, status)
                carry = _with_left(carry, np.full(1, int(correcting)))
                carry, out = benv.execute(
                    carry,
                    a[None, None],
                    record_images=self.record_images,
                    record_env_state=self.record_env_state,
                )
                frames.append(out)
                left = max(left - 1, 0)
                t += 1
        return self._episodes(carry, frames, tasks, families)

    def _check_chunk(self, chunk: np.ndarray, n: int) -> None:
        spec = self.policy.spec
        if chunk.ndim != 3 or chunk.shape[0] != n or chunk.shape[1] < self.r:
            raise ValueError(
                f"policy {spec.name!r} returned chunks of shape {chunk.shape}; expected "
                f"[{n}, >= {self.r}, action_dim] for {n} envs executing {self.r} actions each"
            )


class _WaveKeys:
    """The keys of a wave's chunks (module doc), derived in one program per wave and kept on
    the host as key data (indexing device arrays chunk by chunk costs a dispatch each)."""

    def __init__(self, plans, base, n: int, r: int, corrected: bool, rows: bool, actor: bool):
        self.base, self.n, self.kw = (
            base,
            n,
            dict(n=n, steps=r, corrected=corrected, rows=rows, actor=actor),
        )
        self.host = None if plans is None else self._host(_derive(plans, **self.kw))

    @staticmethod
    def _host(keys):
        return tuple(None if k is None else np.asarray(jax.random.key_data(k)) for k in keys)

    def chunk(self, c: int, count: int):
        """``(act key, rows [count, n] | None, actor keys [count * R, n] | None)`` of chunks
        ``c .. c + count - 1``; the act key is one key, or ``[n]`` with EpisodeKeys."""
        if self.host is not None:
            act, rows, actor = (None if k is None else k[c : c + count] for k in self.host)
        else:  # unbounded host env: plan keys drawn with fold_in, chunk by chunk
            per_env = jnp.ndim(self.base) == 1
            plan = jnp.stack(
                [
                    jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(self.base)
                    if per_env
                    else jax.random.fold_in(self.base, i)
                    for i in range(c, c + count)
                ]
            )
            act, rows, actor = self._host(_derive(plan, **self.kw))

        def wrap(k):
            return None if k is None else jax.random.wrap_key_data(k)

        if actor is not None:
            actor = actor.reshape(-1, *actor.shape[2:])
        return wrap(act[0]), wrap(rows), wrap(actor)


def _view(benv: BatchEnv, carry: Any, size: int) -> np.ndarray | None:
    """What the person sees of env 0: its view at ``size`` pixels, or None when the env has
    none (the person then reads the status and watches the robot)."""
    try:
        return benv.frame(carry, size)
    except ValueError:
        return None


def _with_left(carry: Any, left: np.ndarray) -> Any:
    """``carry`` with ``left`` (``[B]`` correction steps left per env)."""
    if hasattr(carry, "replace"):  # a JaxBatchEnv's Carry (a pytree)
        return carry.replace(left=jnp.asarray(left, jnp.int32))
    carry.left = np.asarray(left, int).copy()
    return carry
