"""The scripted expert solves every family, from fresh and from disturbed states, and is
diverse across episodes.

One compiled program serves every test: ``NUM_ENVS`` mixed-family envs stepped ``STEPS``
times inside one ``lax.scan``, acting randomly for the first ``random_steps`` steps (a traced
argument) and then with the expert. Start states are the session's reset states
(conftest.py), so no reset is compiled here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from anyskill.envs.tabletop import ScriptedExpert
from anyskill.envs.tabletop import tasks as T

NUM_ENVS, STEPS = 96, 200  # 200 = the longest episode (sort): every first episode ends
HOLD = 10  # random actions are held this many steps, so the pusher travels and hits things


@struct.dataclass
class Rollout:
    """Per step ``[STEPS, NUM_ENVS, ...]``: the action taken, the step's success and done
    flags (for the episode that step ended), and the bodies' positions before the step."""

    action: jax.Array
    success: jax.Array
    done: jax.Array
    pos: jax.Array


@functools.cache
def rollout_fn(env):
    expert = ScriptedExpert(env)

    @jax.jit
    def run(state0, key, random_steps, shared_noise):
        """``shared_noise``: every env gets the same noise key (so identical states can only
        act differently through their per-episode style)."""
        k_expert, k_random = jax.random.split(key)

        def body(state, t):
            k = jax.random.fold_in(k_expert, t)
            keys = jax.random.split(k, NUM_ENVS)
            keys = jnp.where(shared_noise, jnp.broadcast_to(k, keys.shape), keys)
            expert_action = jax.vmap(expert)(state, keys)
            k_hold = jax.random.fold_in(k_random, t // HOLD)
            random_action = jax.random.uniform(k_hold, (NUM_ENVS, 2), minval=-1, maxval=1)
            action = jnp.where(t < random_steps, random_action, expert_action)
            nxt = jax.vmap(env.step)(state, action)
            return nxt, Rollout(action, nxt.success, nxt.done, state.physics.bodies.pos)

        _, out = jax.lax.scan(body, state0, jnp.arange(STEPS))
        return out

    return run


def first_episode_success(out: Rollout) -> np.ndarray:
    """``[NUM_ENVS]`` bool: did each env's first episode succeed?"""
    done = np.asarray(out.done)
    assert done.any(axis=0).all(), "an env's first episode did not end within STEPS"
    end = done.argmax(axis=0)
    return np.asarray(out.success)[end, np.arange(done.shape[1])]


@pytest.fixture(scope="module")
def start(resets):
    """The first ``NUM_ENVS`` reset states of the mixed env (all families)."""
    return jax.tree.map(lambda x: x[:NUM_ENVS], resets)


@pytest.fixture(scope="module")
def from_reset(env, start):
    return jax.device_get(rollout_fn(env)(start, jax.random.key(0), 0, False))


def test_expert_solves_every_family(start, from_reset):
    """First-episode success >= 0.9 per family, on 19-28 episodes each (the mixed env draws
    families uniformly). The expert's 95 % target is measured with many more episodes by
    benchmarks/expert_success.py (96-100 % at 128 episodes per family); a family at exactly
    95 % would miss 0.9 on a fresh 20-episode sample with probability ~25 %, so this bound
    cannot be tighter. Measured here: reach 1.0, push 1.0, sort 0.95 (18/19), gather 1.0.
    The run is deterministic: a failure means the expert, env or physics changed."""
    ok = first_episode_success(from_reset)
    family = np.asarray(start.physics.task[:, T.FAMILY])
    rates = {}
    for name in T.FAMILIES:
        mine = family == T.family_code(name)
        assert mine.sum() >= 12, (name, mine.sum())  # enough episodes to measure
        rates[name] = float(ok[mine].mean())
    print("first-episode success per family:", rates)
    assert min(rates.values()) >= 0.9, rates


def test_expert_recovers_from_disturbed_states(env, start):
    """The expert acts from any state: after 20 steps of random full-speed pushing (objects
    knocked around, the pusher anywhere) it still solves push episodes. Measured: 22/23.
    Bound 0.8: the disturbed episodes have 80 steps left and can start in harder places."""
    out = jax.device_get(rollout_fn(env)(start, jax.random.key(1), 20, False))
    push = np.asarray(start.physics.task[:, T.FAMILY]) == T.family_code("push")
    # the disturbance is real: objects of push episodes were moved by the random pushes
    shift = np.linalg.norm(out.pos[20, :, 1:] - out.pos[0, :, 1:], axis=-1).max(-1)
    assert (shift[push] > 0.05).sum() >= 3
    alive = ~np.asarray(out.done[:20]).any(axis=0)  # episodes that reached the expert
    ok = first_episode_success(out)
    rate = float(ok[push & alive].mean())
    print(f"push success after random pushing: {ok[push & alive].sum()}/{(push & alive).sum()}")
    assert rate >= 0.8


def test_expert_is_diverse_across_episodes(env, start):
    """Copies of one push episode that differ only in their seed act differently (style:
    speed, clearance, side, push offset ...) even with the same noise key, and their
    trajectories spread; they still mostly succeed."""
    i = int(np.flatnonzero(np.asarray(start.physics.task[:, T.FAMILY]) == T.family_code("push"))[0])
    copies = jax.tree.map(lambda x: jnp.stack([x[i]] * NUM_ENVS), start)
    seeds = jnp.arange(NUM_ENVS, dtype=jnp.uint32) * 7919 + 1
    copies = copies.replace(physics=copies.physics.replace(seed=seeds))
    out = jax.device_get(rollout_fn(env)(copies, jax.random.key(2), 0, True))
    first = out.action[0]  # same state, same noise key: only the style differs
    assert len({a.tobytes() for a in first}) > NUM_ENVS // 2
    assert first.std(axis=0).max() > 0.05
    assert np.isfinite(out.action).all() and np.abs(out.action).max() <= 1.0
    spread = out.pos[15, :, 0].std(axis=0)  # pusher positions after 15 steps
    assert spread.max() > 0.02
    ok = first_episode_success(out)
    print(f"same start, {NUM_ENVS} styles: success {ok.mean():.2f}")
    assert ok.mean() >= 0.8
