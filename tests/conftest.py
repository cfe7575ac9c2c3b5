import dataclasses

import pytest

from anyskill.algos.crl.config import CRLConfig, get_preset

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


def _rss_bytes() -> int:
    """This process's resident memory now (Linux; 0 where /proc is absent)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


#: resident memory above which a finished test module's compiled programs are dropped
RELEASE_ABOVE_BYTES = 5 * 2**30


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's in-memory compiled programs after a test module once the process holds more
    than RELEASE_ABOVE_BYTES: one pytest process compiles thousands of programs and keeping
    every one of them ended full runs in segfaults inside XLA. Every program goes to the
    persistent compilation cache, so a later module's recompilation is a disk read."""
    import jax

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    if _rss_bytes() > RELEASE_ABOVE_BYTES:
        import gc

        jax.clear_caches()
        gc.collect()
