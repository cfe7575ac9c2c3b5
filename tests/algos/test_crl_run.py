"""CRL run directories: a strict config.json, metrics.jsonl that survives a kill and never
loses good rows on resume, nonsense settings refused (issue 22)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import CRLConfig


def _write_config(run_dir, fields: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / crl_run.CONFIG_FILE).write_text(json.dumps(fields))


def test_config_missing_a_field_is_refused_not_defaulted(tmp_path, tiny_config):
    fields = dataclasses.asdict(tiny_config)
    del fields["critic_width"]
    _write_config(tmp_path, fields)
    with pytest.raises(crl_run.RunError) as e:
        crl_run.load_config(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "config.json") in msg and "critic_width" in msg and "missing" in msg


def test_config_unknown_key_and_wrong_type_name_file_field_expected_actual(tmp_path, tiny_config):
    fields = dataclasses.asdict(tiny_config)
    _write_config(tmp_path, {**fields, "critic_widht": 32})
    with pytest.raises(crl_run.RunError, match="unknown field 'critic_widht'.*critic_width") as e:
        crl_run.load_config(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and "\n" not in str(e.value)
    _write_config(tmp_path, {**fields, "num_envs": "8"})
    with pytest.raises(crl_run.RunError, match=r"num_envs.*an integer.*'8' \(a string\)") as e:
        crl_run.load_config(tmp_path)
    assert "\n" not in str(e.value)
    _write_config(tmp_path, {**fields, "discount": True})
    with pytest.raises(crl_run.RunError, match="discount.*a number.*true"):
        crl_run.load_config(tmp_path)
    _write_config(tmp_path, {**fields, "num_envs": 0})  # the config's own checks, with the file
    with pytest.raises(crl_run.RunError, match="config.json.*num_envs must be positive, got 0"):
        crl_run.load_config(tmp_path)


def test_config_that_is_not_json_names_file_line_and_column(tmp_path, tiny_config):
    text = json.dumps(dataclasses.asdict(tiny_config), indent=2).replace('"seed": 0', '"seed": ')
    (tmp_path / crl_run.CONFIG_FILE).write_text(text)
    with pytest.raises(crl_run.RunError, match=r"config.json: not valid JSON.*line \d+ column \d+"):
        crl_run.load_config(tmp_path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_overrides):
    """A tiny two-epoch run (a few seconds)."""
    from anyskill.algos.crl.config import get_preset

    cfg = dataclasses.replace(get_preset("arena-smoke"), **tiny_overrides)
    run_dir = tmp_path_factory.mktemp("crl") / "run"
    crl_run.train_run(cfg, run_dir, progress=False, log=lambda *_: None)
    return run_dir


def test_resume_refuses_a_bad_middle_metrics_line_and_keeps_every_row(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    lines = (run / crl_run.METRICS_FILE).read_text().splitlines()
    assert len(lines) == 2
    bad = "\n".join(['{"epoch": 0, "env_st', lines[1]]) + "\n"
    (run / crl_run.METRICS_FILE).write_text(bad)
    with pytest.raises(crl_run.RunError, match=r"metrics.jsonl: line 1 is not valid JSON"):
        crl_run.train_run(CRLConfig(), run, resume=True, progress=False, log=lambda *_: None)
    assert (run / crl_run.METRICS_FILE).read_text() == bad  # nothing deleted


def test_resume_drops_a_torn_last_metrics_line(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    good = (run / crl_run.METRICS_FILE).read_text()
    (run / crl_run.METRICS_FILE).write_text(good + '{"epoch": 2, "env_st')  # killed mid-append
    history = crl_run.train_run(CRLConfig(), run, resume=True, progress=False, log=lambda *_: None)
    assert [r["epoch"] for r in history] == [0, 1]
    assert (run / crl_run.METRICS_FILE).read_text() == good


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("learning_rate", -1e-3, "learning_rate must be positive, got -0.001"),
        ("total_env_steps", 0, "total_env_steps must be positive, got 0"),
        ("num_eval_envs", 0, "num_eval_envs must be positive, got 0"),
        ("logsumexp_penalty", -0.1, "logsumexp_penalty must be >= 0, got -0.1"),
    ],
)
def test_nonsense_settings_are_refused(tiny_config, field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_config, **{field: value})


def test_eval_refuses_zero_episodes(tmp_path, capsys):
    from anyskill.cli import main

    assert main(["eval", str(tmp_path), "--episodes", "0"]) == 2
    err = capsys.readouterr().err
    assert "--episodes must be >= 1, got 0" in err and "Traceback" not in err
