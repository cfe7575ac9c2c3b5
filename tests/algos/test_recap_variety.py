"""Behaviour variety (algos/recap/variety.py): which chunks are varied and how, on a policy
whose chunks are known."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from anyskill.algos.recap.variety import ChunkVariety, varied
from anyskill.policies.base import STATE, ChunkPolicy, InputSpec, PolicySpec

H, A = 4, 2


class Constant(ChunkPolicy):
    """Every row's chunk is 0.8 everywhere; remembers the keys it was given."""

    def __init__(self):
        self.spec = PolicySpec((InputSpec(STATE, (3,), "float32"),), A, H, 10.0, name="const")
        self.keys = []

    def act(self, obs, key):
        self.keys.append(key)
        return np.full((len(obs[STATE]), H, A), 0.8, np.float32)


def obs(b):
    return {STATE: np.zeros((b, 3), np.float32)}


def test_varied_chunks_are_slowed_whole_and_the_rest_untouched():
    inner = Constant()
    pol = ChunkVariety(inner, fraction=0.5, slow=0.25, noise=0.0)
    key = jax.random.key(0)
    out = pol.act(obs(4000), key)
    assert inner.keys[0] is key  # the inner policy's samples do not change
    plain = np.all(out == 0.8, axis=(1, 2))
    assert 0.45 < (~plain).mean() < 0.55  # the fraction varied
    v = out[~plain]
    # one scale per chunk: every action of a varied chunk is scaled alike, within [0.25, 1]
    assert np.all(v == v[:, :1, :1]) and np.all((v >= 0.8 * 0.25) & (v < 0.8))
    scale = v[:, 0, 0] / 0.8
    assert abs(scale.mean() - 0.625) < 0.02  # U[0.25, 1]
    np.testing.assert_array_equal(pol.act(obs(4000), key), out)  # the key decides


def test_offsets_are_constant_over_a_chunk_and_clipped():
    pol = ChunkVariety(Constant(), fraction=1.0, slow=1.0, noise=0.5)
    out = pol.act(obs(2000), jax.random.key(1))
    assert np.all(out == out[:, :1, :])  # the offset holds over the chunk
    off = out[:, 0, :] - 0.8
    assert np.all(out <= 1.0) and np.all(out >= -1.0)
    # the negative offsets are never clipped here (0.8 - 1.8 = -1): a half-normal of std 0.5
    neg = -off[off < 0]
    assert abs(neg.mean() - 0.5 * np.sqrt(2 / np.pi)) < 0.03
    # offsets above 0.2 end at the bound: P(N(0, 0.5) > 0.2) = 0.345
    assert abs((out[:, 0, :] == 1.0).mean() - 0.345) < 0.03
    assert not np.allclose(off[:, 0], off[:, 1])  # one offset per action dimension


def test_one_key_per_env_is_honoured():
    pol = ChunkVariety(Constant(), fraction=0.5, slow=0.0)
    keys = jax.random.split(jax.random.key(2), 6)
    a = pol.act(obs(6), keys)
    # row i's draw depends on its own key only
    b = pol.act(obs(3), keys[:3])
    np.testing.assert_array_equal(a[:3], b)


def test_no_variety_is_the_plain_policy_and_bad_settings_are_refused():
    inner = Constant()
    assert varied(inner, 0.0, 0.5, 0.0) is inner
    assert isinstance(varied(inner, 0.3, 0.5, 0.0), ChunkVariety)
    assert "variety(0.3,0.5,0)" in varied(inner, 0.3, 0.5, 0.0).spec.name
    for kw, msg in [
        (dict(fraction=1.5), "fraction must be in"),
        (dict(slow=-0.1), "slow must be in"),
        (dict(noise=-1.0), "noise must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            ChunkVariety(inner, **kw)


def test_the_flywheel_refuses_bad_variety_settings(tmp_path):
    from anyskill.flywheel.config import FlywheelConfig

    with pytest.raises(ValueError, match="variety and variety_slow must be in"):
        FlywheelConfig(run_dir=tmp_path, variety=2.0)
    with pytest.raises(ValueError, match="variety_noise must be >= 0"):
        FlywheelConfig(run_dir=tmp_path, variety=0.5, variety_noise=-0.1)
    cfg = FlywheelConfig(run_dir=tmp_path, variety=0.5, advantage_center=True)
    assert cfg.variety_slow == 0.5 and cfg.variety_noise == 0.0
