import dataclasses
import os

import pytest

from anyskill.algos.crl.config import CRLConfig, get_preset

# Every Ray a test starts keeps token authentication on and listens on loopback only; Ray reads
# both when it is imported (anyskill.flywheel.fleet: require_token_auth, LOOPBACK_ONLY).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

#: A CRL config small enough to compile and run in seconds: for plumbing tests, not learning.
TINY_OVERRIDES = dict(
    num_envs=8,
    batch_size=16,
    replay_capacity=20,
    min_replay_steps=10,
    critic_width=16,
    actor_width=16,
    num_eval_envs=8,
    total_env_steps=2_000,
    num_epochs=2,
    unroll_length=5,
    updates_per_unroll=2,
)


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """TINY_OVERRIDES for fixtures of any scope (``from conftest import`` is ambiguous once
    another folder's conftest.py has been imported)."""
    return dict(TINY_OVERRIDES)


@pytest.fixture
def tiny_config() -> CRLConfig:
    return dataclasses.replace(get_preset("arena-smoke"), **TINY_OVERRIDES)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory compiled programs after each test module: one pytest process
    compiles thousands of programs and would otherwise keep every one of them (the persistent
    compilation cache makes a later module's recompilation a disk read)."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
