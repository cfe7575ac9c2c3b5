"""The one rollout: against a plain Python loop, its key schedule, correctors and their
intervention flags, host (Gymnasium) envs, and the spec/field check."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill import envs
from anyskill.policies.base import (
    GOAL,
    IMAGE,
    STATE,
    ChunkPolicy,
    InputSpec,
    ObservationError,
    PolicySpec,
)
from anyskill.rollout import (
    Corrector,
    EpisodeKeys,
    HostBatchEnv,
    JaxBatchEnv,
    PersonDecides,
    StallTrigger,
    expert_policy,
    random_policy,
    rollout,
)


@dataclasses.dataclass(frozen=True, eq=False)
class KeyedPolicy(ChunkPolicy):
    """Chunks that depend on the state and the key: ``tanh(goal - pos) + noise(key)``."""

    obs_dim: int
    goal_dim: int
    horizon: int = 4
    noise: float = 0.3

    def __post_init__(self):
        spec = PolicySpec(
            (
                InputSpec(STATE, (self.obs_dim,), "float32"),
                InputSpec(GOAL, (self.goal_dim,), "float32"),
            ),
            action_dim=2,
            action_horizon=self.horizon,
            control_hz=10.0,
        )
        object.__setattr__(self, "spec", spec)

    def act(self, obs, key):
        toward = np.tanh(3 * (obs[GOAL][:, :2] - obs[STATE][:, :2]))
        chunk = np.repeat(toward[:, None], self.horizon, axis=1)
        if self.noise:  # (deterministic without noise: then any key, or one per env, works)
            chunk = chunk + self.noise * np.asarray(jax.random.normal(key, chunk.shape))
        return chunk.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Stepwise(ChunkPolicy):
    """``inner`` called through ``act`` (the rollout cannot fuse it into its scan)."""

    inner: object

    def __post_init__(self):
        object.__setattr__(self, "spec", self.inner.spec)

    def act(self, obs, key):
        return self.inner.act(obs, key)


@pytest.fixture(scope="module")
def maze():
    return envs.make("pointmaze-u", episode_length=30)


@pytest.fixture(scope="module")
def reach():
    return envs.make("tabletop-reach", num_objects=1, image_size=16)


def test_rollout_equals_a_plain_python_loop(maze):
    """Same keys, same policy: the chunked, jitted rollout records what stepping the env one
    action at a time records (module doc of anyskill.rollout.core: the key schedule)."""
    policy, n, r = KeyedPolicy(maze.obs_dim, maze.goal_dim), 3, 3
    key = jax.random.key(5)
    ep = rollout(maze, policy, key, num_envs=n, replan_every=r)

    k_reset, k_run, _ = jax.random.split(key, 3)
    state = jax.vmap(maze.reset)(jax.random.split(k_reset, n))
    step = jax.jit(jax.vmap(maze.step))
    plans = jax.random.split(k_run, -(-maze.episode_length // r))
    obs, act, done = [], [], np.zeros(n, bool)
    length, success = np.zeros(n, int), np.zeros(n, bool)
    for c in range(len(plans)):
        batch = {STATE: np.asarray(state.obs), GOAL: np.asarray(state.goal)}
        chunk = policy.act(batch, plans[c])
        for j in range(r):
            obs.append(np.asarray(state.obs))
            act.append(chunk[:, j])
            state = step(state, chunk[:, j])
            ended = np.asarray(state.terminated | state.truncated)
            success = np.where(done, success, np.asarray(state.success) & ended)
            length += ~done
            done |= ended
        if done.all():
            break
    np.testing.assert_array_equal(ep.state, np.stack(obs, 1))
    np.testing.assert_array_equal(ep.action, np.stack(act, 1))
    np.testing.assert_array_equal(ep.length, length)
    np.testing.assert_array_equal(ep.success, success)
    assert (ep.length == maze.episode_length).all() and not ep.intervention.any()
    assert ep.family is None and ep.task == [""] * n


def test_a_step_policy_runs_in_the_scan_with_the_keys_act_would_get(maze):
    """A StatePolicy (here: random actions) fused into the env's scan gives the episodes
    that calling its ``act`` step by step gives; with EpisodeKeys an episode does not depend
    on the others in its batch."""
    policy = random_policy(maze)
    key = jax.random.key(1)
    fused = rollout(maze, policy, key, num_envs=3, horizon=12)
    stepped = rollout(maze, Stepwise(policy), key, num_envs=3, horizon=12)
    for f in ("state", "action", "length", "success", "reward", "final_state"):
        np.testing.assert_array_equal(getattr(fused, f), getattr(stepped, f), err_msg=f)
    assert np.abs(fused.action).max() > 0.5 and (fused.length == 12).all()

    pairs = jax.vmap(jax.random.split)(jax.random.split(jax.random.key(2), 3))
    keys = EpisodeKeys(reset=pairs[:, 0], run=pairs[:, 1])
    batch = rollout(maze, policy, keys, num_envs=3, horizon=12)
    alone = rollout(maze, policy, EpisodeKeys(pairs[2:, 0], pairs[2:, 1]), num_envs=1, horizon=12)
    np.testing.assert_array_equal(batch.action[2:], alone.action)
    np.testing.assert_array_equal(batch.state[2:], alone.state)


def toward_goal(state, key):
    """A JAX actor for the maze: full speed towards the goal."""
    return jnp.clip(3.0 * (state.goal - state.obs[:2]), -1.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class StillPolicy(ChunkPolicy):
    """Zero chunks: any progress must come from the corrector."""

    spec: PolicySpec = PolicySpec((InputSpec(STATE, (4,), "float32"),), 2, 5, 10.0)

    def act(self, obs, key):
        return np.zeros((len(obs[STATE]), 5, 2), np.float32)


def test_the_stall_trigger_hands_a_still_policy_to_the_actor_for_correction_steps(maze):
    corrector = Corrector(StallTrigger(window=10), toward_goal, fraction=1.0, correction_steps=7)
    ep = rollout(
        maze,
        StillPolicy(),
        jax.random.key(0),
        num_envs=2,
        corrector=corrector,
        record_env_state=True,
    )
    iv = ep.intervention
    # boundaries every 5 steps: the stall over 10 steps is seen at step 10
    assert not iv[:, :10].any() and iv[:, 10:17].all(), iv.astype(int)
    assert not iv[:, 17:20].any()  # handed back; the next boundary is at step 20
    # the corrected frames hold the actor's actions, the others the policy's zeros
    state = jax.tree.map(lambda x: x[:, 12], ep.env_state)
    np.testing.assert_allclose(ep.action[:, 12], jax.vmap(toward_goal)(state, None), atol=1e-6)
    np.testing.assert_array_equal(ep.action[:, :10], 0.0)
    np.testing.assert_array_equal(ep.state[:, 17, :2] != ep.state[:, 10, :2], True)
    # nobody watching: the trigger never hands over
    idle = rollout(
        maze,
        StillPolicy(),
        jax.random.key(0),
        num_envs=2,
        corrector=dataclasses.replace(corrector, fraction=0.0),
    )
    assert not idle.intervention.any()
    np.testing.assert_array_equal(idle.action, 0.0)
    # a person-decides trigger never fires on its own
    assert not PersonDecides().fire(_boundary(2)).any()


def _boundary(n):
    from anyskill.rollout import Boundary

    return Boundary({}, [np.zeros(n)], 5)


def test_a_host_env_and_the_jax_env_give_the_same_trajectories(maze):
    """The maze as a Gymnasium env (stepped from Python, one episode at a time) and as the
    pure-JAX env, started from the same states, with a deterministic policy."""
    gym = pytest.importorskip("gymnasium")
    from anyskill.envs.adapters.gymnasium import GymnasiumEnv

    policy = KeyedPolicy(maze.obs_dim, maze.goal_dim, noise=0.0)
    got = rollout(HostBatchEnv(GymnasiumEnv(maze), seed=3), policy, jax.random.key(0), num_envs=2)
    starts = _gym_starts(gym, 3, 2)
    want = rollout(maze, policy, EpisodeKeys(starts, starts), num_envs=2)
    np.testing.assert_array_equal(got.length, want.length)
    np.testing.assert_array_equal(got.success, want.success)
    t = int(want.length.max())  # the JAX env runs whole chunks; the rest is padding
    np.testing.assert_allclose(got.state[:, :t], want.state[:, :t], atol=1e-5)
    np.testing.assert_allclose(got.action[:, :t], want.action[:, :t], atol=1e-5)
    np.testing.assert_allclose(got.final_state, want.final_state, atol=1e-5)


def _gym_starts(gym, seed: int, n: int) -> jax.Array:
    """The reset keys GymnasiumEnv.reset(seed=seed + i) uses."""
    seeds = [
        np.uint32(gym.utils.seeding.np_random(seed + i)[0].integers(0, 2**32, dtype=np.uint64))
        for i in range(n)
    ]
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))


@pytest.mark.slow  # ~20 s; host envs also run through the rollout in the gym-hil flywheel round
def test_a_gymnasium_env_through_the_same_rollout_succeeds_where_the_jax_env_does(reach):
    """The scripted reach controller on tabletop-reach: stepped as a host Gymnasium env, one
    episode at a time, and as the pure-JAX env, on the same episodes (the Gymnasium env's
    seed s resets with the key the JAX env is given)."""
    gym = pytest.importorskip("gymnasium")
    from anyskill.envs.adapters.gymnasium import GymnasiumEnv
    from anyskill.policies.builtin import ReachController

    controller = ReachController(num_objects=1, aim_jitter=0.0)
    host = HostBatchEnv(GymnasiumEnv(reach), seed=10)
    got = rollout(host, controller, jax.random.key(0), num_envs=4)
    starts = _gym_starts(gym, 10, 4)
    want = rollout(reach, controller, EpisodeKeys(starts, starts), num_envs=4)
    assert want.success.any()
    np.testing.assert_array_equal(got.success, want.success)
    np.testing.assert_array_equal(got.length, want.length)
    assert got.task == want.task
    np.testing.assert_allclose(
        got.state[0, : got.length[0]], want.state[0, : want.length[0]], atol=1e-5
    )


def test_a_field_the_env_does_not_offer_is_one_error_before_anything_runs(maze, reach):
    camera = dataclasses.replace(
        KeyedPolicy(maze.obs_dim, maze.goal_dim).spec,
        inputs=(InputSpec(IMAGE, (16, 16, 3), "uint8"),),
    )

    @dataclasses.dataclass(frozen=True, eq=False)
    class Wants(ChunkPolicy):
        spec: PolicySpec

        def act(self, obs, key):  # pragma: no cover - never reached
            raise AssertionError("the policy must not be called")

    with pytest.raises(ObservationError, match="observation/image.*does not offer"):
        rollout(maze, Wants(camera), jax.random.key(0), num_envs=2)
    wrong = dataclasses.replace(camera, inputs=(InputSpec(STATE, (7,), "float32"),))
    with pytest.raises(ObservationError, match=r"observation/state.*shape \(7,\).*offers shape"):
        rollout(reach, Wants(wrong), jax.random.key(0), num_envs=2)
    # the privileged env state exists only in the simulator
    pytest.importorskip("gymnasium")
    from anyskill.envs.adapters.gymnasium import GymnasiumEnv

    with pytest.raises(ObservationError, match="env/state.*does not offer"):
        rollout(GymnasiumEnv(maze), expert_policy(reach), jax.random.key(0), num_envs=1)


def test_jax_batch_env_programs_are_reused(maze):
    """A prepared JaxBatchEnv is rolled out again without recompiling (the Evaluator's use)."""
    benv = JaxBatchEnv(maze)
    policy = KeyedPolicy(maze.obs_dim, maze.goal_dim)
    a = rollout(benv, policy, jax.random.key(3), num_envs=2, replan_every=2)
    b = rollout(benv, policy, jax.random.key(3), num_envs=2, replan_every=2)
    np.testing.assert_array_equal(a.state, b.state)
