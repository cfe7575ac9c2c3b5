"""The run-directory format (anyskill.rundir): strict configs, NaN-free JSON, metrics.jsonl
that survives a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyskill import rundir
from anyskill.algos.vla.config import ModelConfig, TrainConfig


def test_a_policy_config_round_trips_with_nested_tuples(tmp_path):
    cfg = TrainConfig(
        data=(tmp_path / "d",),
        run_dir=tmp_path / "r",
        model=ModelConfig(
            state_dim=8,
            state_tokens=((0, 2, 0), (2, 8, 1)),
            state_token_words=(((-1, ("red",)),), ((2, ("red", "blue")),)),
        ),
        eval_split=("train",),
    )
    path = tmp_path / "config.json"
    rundir.write_json(path, rundir.config_to_json(cfg))
    assert rundir.load_config(TrainConfig, path) == cfg
    d = rundir.read_json(path)
    d["model"]["state_tokens"][1] = [2, 8]  # a slice needs three numbers
    with pytest.raises(rundir.RunError, match=r"'model.state_tokens\[1\]' must be a list of 3"):
        rundir.config_from_json(TrainConfig, d, path)
    d = rundir.read_json(path)
    d["run_dir"] = None  # Path | None
    assert rundir.config_from_json(TrainConfig, d, path).run_dir is None
    d["model"]["arch"] = "transformer"
    with pytest.raises(rundir.RunError, match=r"'model.arch' must be one of 'vla', 'mlp-bc'"):
        rundir.config_from_json(TrainConfig, d, path)


def test_json_output_never_holds_nan(tmp_path):
    text = rundir.dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": 2})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": 2}
    assert "NaN" not in text and "Infinity" not in text


def test_metrics_torn_tail_dropped_bad_middle_refused_newer_rows_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (2, 4, 6):
        rundir.append_metrics(path, {"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in rundir.read_metrics(path)] == [2, 4, 6]
    with open(path, "a") as f:
        f.write('{"step": 8, "lo')  # killed mid-append
    assert [r["step"] for r in rundir.read_metrics(path)] == [2, 4, 6]
    # resumed from the checkpoint of step 4: row 6 (written before its checkpoint) and the
    # torn line go; the file is rewritten without them
    assert [r["step"] for r in rundir.resume_metrics(path, "step", 4)] == [2, 4]
    assert path.read_text().count("\n") == 2
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(rundir.RunError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        rundir.resume_metrics(path, "step", 4)
    assert "garbage" in path.read_text()  # nothing deleted
    assert rundir.read_metrics(Path(tmp_path / "none.jsonl")) == []


def test_settings_added_later_load_from_older_run_files_with_their_default(tmp_path):
    """A flywheel run started before --deploy/--robots and model.cameras existed resumes:
    those fields are marked ADDED_LATER, and their defaults are what the old run did. Any
    other missing field is still refused."""
    import json

    from anyskill.flywheel.config import FlywheelConfig

    full = rundir.config_to_json(FlywheelConfig())
    old = {k: v for k, v in full.items() if k not in ("deploy", "robots")}
    old["model"] = {k: v for k, v in old["model"].items() if k != "cameras"}
    # a run of the fleet before robot workers: its fleet settings lack theirs
    old["fleet"] = {
        k: v for k, v in old["fleet"].items() if k not in ("robot_wait_s", "sim_robots")
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = rundir.load_config(FlywheelConfig, path)
    assert cfg.deploy == "sim" and cfg.model.cameras == ()
    assert cfg.fleet.robot_wait_s == 30.0 and not cfg.fleet.sim_robots
    del old["rounds"]
    path.write_text(json.dumps(old))
    with pytest.raises(rundir.RunError, match="field 'rounds' is missing"):
        rundir.load_config(FlywheelConfig, path)
