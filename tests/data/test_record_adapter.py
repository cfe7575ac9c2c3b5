"""``anyskill data record --env gym-pusht``: an adapter env's scripted expert recorded through
the one rollout into a LeRobot dataset; a stopped recording continues; bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anyskill.cli import main
from anyskill.data.reader import Dataset
from anyskill.data.record import record_adapter_expert
from anyskill.envs.adapters import ADAPTER_ENVS, AdapterEnv
from anyskill.envs.adapters.experts import pusht_action

pytest.importorskip("gym_pusht")


def test_recording_continues_and_equals_one_recording(tmp_path):
    """2 + 1 episodes recorded in two sessions hold the same frames as 3 in one; the labels
    are the expert's actions of the recorded states (noise 0)."""
    two = record_adapter_expert(tmp_path / "a", "gym-pusht", episodes=2, noise=0.0, max_steps=8)
    assert (two.episodes, two.frames) == (2, 16)
    record_adapter_expert(tmp_path / "a", "gym-pusht", episodes=1, noise=0.0, max_steps=8)
    record_adapter_expert(tmp_path / "b", "gym-pusht", episodes=3, noise=0.0, max_steps=8)
    a, b = Dataset.open(tmp_path / "a"), Dataset.open(tmp_path / "b")
    assert a.num_episodes == b.num_episodes == 3 and a.tasks == b.tasks
    for key in ("observation.state", "action"):
        np.testing.assert_array_equal(np.asarray(a.columns[key]), np.asarray(b.columns[key]))
    states = np.asarray(a.columns["observation.state"])
    want = np.stack([pusht_action(s) for s in states])
    np.testing.assert_allclose(np.asarray(a.columns["action"]), want, rtol=1e-6)
    # the episodes differ (episode i resets with seed + i)
    assert not np.array_equal(states[0], states[8])


def test_bad_recordings_are_refused_and_nothing_is_lost(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    record_adapter_expert(out, "gym-pusht", episodes=1, max_steps=4)
    monkeypatch.setitem(
        ADAPTER_ENVS, "no-expert", AdapterEnv("no-expert", ADAPTER_ENVS["gym-pusht"].make, "x", 4)
    )
    with pytest.raises(ValueError, match="no-expert has no scripted expert to record"):
        record_adapter_expert(tmp_path / "e", "no-expert")
    with pytest.raises(ValueError, match="unknown adapter env with a scripted expert"):
        record_adapter_expert(tmp_path / "e", "gym-push")
    monkeypatch.setitem(
        ADAPTER_ENVS,
        "other",
        AdapterEnv(
            "other", ADAPTER_ENVS["gym-pusht"].make, "x", 4, ADAPTER_ENVS["gym-pusht"].expert
        ),
    )
    with pytest.raises(ValueError, match="--env does not match.*--env=gym-pusht"):
        record_adapter_expert(out, "other", episodes=1)
    assert Dataset.open(out).num_episodes == 1  # the refused continuation wrote nothing
    for flags in (["--images"], ["--dart"]):
        assert main(["data", "record", "--env", "gym-pusht", "--out", str(out), *flags]) != 0
        assert "gym-pusht is recorded from its state observations" in capsys.readouterr().err
    assert main(["data", "record", "--out", str(tmp_path / "t"), "--max-steps", "5"]) != 0
    assert "--max-steps is for adapter envs" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert Dataset.open(out).num_episodes == 1


def test_the_cli_records_an_adapter_env(tmp_path, capsys):
    out = tmp_path / "p"
    args = ["data", "record", "--env", "gym-pusht", "--out", str(out), "--episodes", "2"]
    assert main([*args, "--max-steps", "5"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["episodes"] == 2 and rec["frames"] == 10
    ds = Dataset.open(out)
    assert ds.info.robot_type == "gym-pusht" and ds.info.fps == 10
