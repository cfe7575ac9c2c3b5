"""Scripted-expert recording: DART labels are the expert's noise-free action at the state the
noisy execution reached, and the executed actions replay the episode."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from anyskill import envs
from anyskill.data.reader import Dataset
from anyskill.data.record import EXECUTED, _episode_keys, record_expert
from anyskill.envs.tabletop import ScriptedExpert


def test_dart_labels_are_the_noise_free_expert_along_the_noisy_trajectory(tmp_path):
    out = tmp_path / "dart"
    record_expert(out, "tabletop-reach", episodes=1, noise=0.3, seed=3, batch=1, dart=True)
    ds = Dataset.open(out)
    label = np.asarray(ds.columns["action"])
    executed = np.asarray(ds.columns[EXECUTED])
    assert np.abs(label - executed).mean() > 0.05  # the noise was executed, not recorded

    env = envs.make("tabletop-reach")
    expert = ScriptedExpert(env, noise=0.0)
    n = int(ds.episodes.stop[0])
    k_reset, _ = jax.random.split(_episode_keys(3, 0, 1)[0])

    @jax.jit
    def replay(actions):
        def step(state, a):
            return env.step(state, a), (state.obs, expert(state, jax.random.key(0)))

        return jax.lax.scan(step, env.reset(k_reset), actions)[1]

    obs, clean = replay(executed[:n])
    np.testing.assert_allclose(obs, ds.columns["observation.state"][:n], atol=1e-5)
    np.testing.assert_allclose(clean, label[:n], atol=1e-5)


def test_a_recording_is_continued_only_the_way_it_was_started(tmp_path):
    out = tmp_path / "plain"
    record_expert(out, "tabletop-reach", episodes=1, seed=0, batch=1)
    with pytest.raises(ValueError, match="the dataset has --dart=False, given --dart=True"):
        record_expert(out, "tabletop-reach", episodes=1, seed=0, batch=1, dart=True)
    assert Dataset.open(out).num_episodes == 1  # nothing already saved was lost
