"""Checkpoint round trip, mismatch and corruption errors."""

import dataclasses

import jax
import numpy as np
import pytest

from anyskill import checkpoint
from anyskill.algos.crl.train import make_train


def _state(config, seed=0):
    trainer = make_train(config)
    return jax.jit(trainer.init_state)(jax.random.PRNGKey(seed))


def test_round_trip_every_leaf(tmp_path, tiny_config):
    state = _state(tiny_config)
    path = tmp_path / "ck.msgpack"
    checkpoint.save(path, state, {"epoch": 3})
    template = _state(tiny_config, seed=1)
    restored, meta = checkpoint.load(path, template)
    assert meta == {"epoch": 3}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_different_config_is_named(tmp_path, tiny_config):
    path = tmp_path / "ck.msgpack"
    checkpoint.save(path, _state(tiny_config), {})
    other = _state(dataclasses.replace(tiny_config, critic_width=2 * tiny_config.critic_width))
    with pytest.raises(checkpoint.CheckpointError, match="shape .* different config"):
        checkpoint.load(path, other)
    deeper = _state(dataclasses.replace(tiny_config, critic_depth=0))
    with pytest.raises(checkpoint.CheckpointError, match="different config"):
        checkpoint.load(path, deeper)


def test_corrupt_and_missing(tmp_path, tiny_config):
    path = tmp_path / "ck.msgpack"
    checkpoint.save(path, _state(tiny_config), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path, _state(tiny_config))
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "nope.msgpack", _state(tiny_config))
