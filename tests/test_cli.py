"""Bad input gets one clear message before any compilation, and nothing is overwritten."""

import json

import pytest

from anyskill.algos.crl.config import CRLConfig
from anyskill.cli import main


def run_cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as e:  # tyro exits on parse/validation errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_unknown_env_suggests(capsys):
    code, text = run_cli(capsys, "train", "crl", "--env", "pointmaze-uu", "--run-dir", "x")
    assert code != 0 and "Did you mean 'pointmaze-u'" in text


def test_unknown_preset_suggests(capsys):
    code, text = run_cli(capsys, "train", "crl", "--preset", "pointmaze-uu")
    assert code == 2 and "unknown preset" in text and "Did you mean" in text


def test_depth_not_multiple_of_4(capsys):
    code, text = run_cli(capsys, "train", "crl", "--depth", "10")
    assert code == 2 and "multiple of 4, got 10" in text
    code, text = run_cli(capsys, "train", "crl", "--critic-depth", "6")
    assert code != 0 and "multiple of 4, got 6" in text


def test_unknown_command(capsys):
    code, text = run_cli(capsys, "trian")
    assert code == 2 and "Did you mean 'train'" in text


def test_counts_must_divide_devices():
    cfg = CRLConfig()
    cfg.check_devices(1)
    with pytest.raises(
        ValueError, match="num_envs=256 must be divisible by the number of devices \\(3\\)"
    ):
        cfg.check_devices(3)


def test_invalid_combinations():
    with pytest.raises(
        ValueError, match="min_replay_steps \\(600\\) cannot exceed replay_capacity"
    ):
        CRLConfig(min_replay_steps=600, replay_capacity=500)
    with pytest.raises(ValueError, match="too small"):
        CRLConfig(total_env_steps=1000)
    with pytest.raises(ValueError, match="discount"):
        CRLConfig(discount=1.0)


def test_eval_on_a_dir_that_is_not_a_run(capsys, tmp_path):
    code, text = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "is not a run directory" in text


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"env": "pointmaze-u"}))
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n')
    code, text = run_cli(capsys, "train", "crl", "--run-dir", str(tmp_path))
    assert code == 2 and "already holds a run" in text and "--resume" in text
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 0}\n'


def test_help_lists_commands(capsys):
    code, text = run_cli(capsys, "--help")
    assert code == 0 and "train crl" in text and "eval" in text
