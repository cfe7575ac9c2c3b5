"""Compiled tabletop programs shared by the test files of this folder.

XLA:CPU takes ~5-10 s to compile a tabletop ``reset`` or ``step``, far more than running
them, so the mixed env (all families, ``split="train"``) and its jitted functions are built
once per session, lazily, and every test that can reuses them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.envs import make
from anyskill.envs.tabletop import Tabletop

NUM_RESETS = 240  # fresh episodes sampled for statistics over resets (~60 per family)


@pytest.fixture(scope="session")
def env() -> Tabletop:
    return make("tabletop")


@pytest.fixture(scope="session")
def reset(env):
    return jax.jit(env.reset)


@pytest.fixture(scope="session")
def step(env):
    return jax.jit(env.step)


@pytest.fixture(scope="session")
def resets(reset):
    """``NUM_RESETS`` reset states of the mixed env, stacked on a leading axis."""
    key = jax.random.key(2024)
    states = [reset(jax.random.fold_in(key, i)) for i in range(NUM_RESETS)]
    return jax.tree.map(stack, *states)


def stack(*arrays):
    """``jnp.stack`` done on the host (eager ``jnp.stack`` of 240 arrays compiles per call)."""
    if jax.dtypes.issubdtype(arrays[0].dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(np.stack([jax.random.key_data(a) for a in arrays]))
    return jnp.asarray(np.stack(jax.device_get(arrays)))
