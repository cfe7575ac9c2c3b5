"""Deep teacher -> shallow student (issue 28): the losses on hand-built values, the cost model,
distillation on a tiny teacher (held-out distance error falls), the student is an ordinary CRL
run, and bad input is refused with a clear message."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import get_preset
from anyskill.algos.crl.distill import (
    DISTILL_FILE,
    DistillConfig,
    StudentConfig,
    actor_distill_loss,
    actor_macs,
    critic_distill_loss,
    distill_run,
    student_config,
)
from anyskill.rundir import RunError


def test_critic_loss_is_zero_only_when_student_matches_teacher():
    f_t = jnp.array([[-1.0, -2.0], [-3.0, -0.5]])
    loss, m = critic_distill_loss(f_t, f_t, kl_weight=1.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-7)
    # a constant shift: the squared error sees it, the softmax over goals does not
    loss, m = critic_distill_loss(f_t + 1.0, f_t, kl_weight=1.0)
    assert float(m["critic_mse"]) == pytest.approx(1.0)
    assert float(m["critic_kl"]) == pytest.approx(0.0, abs=1e-6)
    # hand-computed KL of one row: p_T = softmax([0, 0]) = (.5, .5), p_S = softmax([0, log 3])
    f_t = jnp.zeros((1, 2))
    f_s = jnp.array([[0.0, np.log(3.0)]])
    _, m = critic_distill_loss(f_s, f_t, kl_weight=1.0)
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert float(m["critic_kl"]) == pytest.approx(expected, rel=1e-5)


def test_actor_loss_compares_squashed_means():
    mean_t = jnp.array([[0.0, 20.0]])
    log_std = jnp.zeros((1, 2))
    # pre-tanh 20 vs 30: both saturate at 1, so the deployed actions agree
    loss, m = actor_distill_loss(jnp.array([[0.0, 30.0]]), log_std, mean_t, log_std, 0.1)
    assert float(m["action_mse"]) == pytest.approx(0.0, abs=1e-6)
    loss, m = actor_distill_loss(jnp.array([[np.arctanh(0.5), 20.0]]), log_std, mean_t, log_std, 0)
    assert float(loss) == pytest.approx(0.25, rel=1e-5)
    _, m = actor_distill_loss(mean_t, log_std + 2.0, mean_t, log_std, 0.1)
    assert float(m["log_std_mse"]) == pytest.approx(8.0)  # 2 dims x 2^2


def test_actor_macs_by_hand():
    # (4 + 2) x 64 input + 8 x 64 x 64 residual + 64 x (2 x 2) head
    assert actor_macs(4, 2, 2, width=64, depth=8) == 6 * 64 + 8 * 64 * 64 + 64 * 4
    assert actor_macs(4, 2, 2, width=32, depth=0) == 6 * 32 + 32 * 4


def test_student_larger_than_teacher_is_refused_naming_the_field(tiny_config):
    teacher = dataclasses.replace(tiny_config, critic_depth=8, actor_depth=8)
    with pytest.raises(ValueError, match=r"student.critic_depth=12 > teacher's 8"):
        student_config(teacher, StudentConfig(critic_depth=12, actor_depth=4))
    with pytest.raises(ValueError, match=r"student.actor_width=64 > teacher's 16"):
        student_config(teacher, StudentConfig(actor_width=64))
    s = student_config(teacher, StudentConfig(critic_depth=4, actor_depth=0, critic_width=8))
    assert (s.critic_depth, s.actor_depth, s.critic_width, s.actor_width) == (4, 0, 8, 16)
    with pytest.raises(ValueError, match="multiple of 4.*got 2"):
        StudentConfig(critic_depth=2)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_overrides):
    """A tiny depth-8 teacher (a few seconds) and its depth-4, half-width student."""
    root = tmp_path_factory.mktemp("distill")
    teacher_cfg = dataclasses.replace(
        get_preset("arena-smoke"), **tiny_overrides, critic_depth=8, actor_depth=8
    )
    crl_run.train_run(teacher_cfg, root / "teacher", progress=False, log=lambda *_: None)
    config = DistillConfig(
        student=StudentConfig(critic_depth=4, actor_depth=4, critic_width=8, actor_width=8),
        steps=300,
        batch_size=32,
        log_every=100,
        eval_batches=4,
        eval_episodes=8,
    )
    summary = distill_run(
        root / "teacher", root / "student", config, progress=False, log=lambda *_: None
    )
    return root, summary


def test_distillation_reduces_heldout_distance_and_action_error(distilled):
    _, s = distilled
    before, after = s["heldout_before"], s["heldout_after"]
    # held-out = trajectories (env columns) never trained on
    assert after["distance_rmse"] < 0.5 * before["distance_rmse"], (before, after)
    assert after["action_mse"] < 0.5 * before["action_mse"], (before, after)
    assert s["macs_ratio"] > 4


def test_student_run_is_an_ordinary_crl_run(distilled):
    root, s = distilled
    student = root / "student"
    cfg = crl_run.load_config(student)
    assert (cfg.critic_depth, cfg.actor_depth, cfg.critic_width, cfg.actor_width) == (4, 4, 8, 8)
    assert json.loads((student / DISTILL_FILE).read_text())["teacher"] == str(root / "teacher")

    from anyskill.algos.crl.policy import CRLPolicy
    from anyskill.policies.base import GOAL, STATE

    policy = CRLPolicy(student)
    obs_dim = policy.spec.inputs[0].shape[0]
    batch = {STATE: np.zeros((3, obs_dim), np.float32), GOAL: np.ones((3, 2), np.float32)}
    actions = policy.act(batch, jax.random.PRNGKey(0))
    assert (
        actions.shape == (3, 1, 2) and np.all(np.abs(actions) <= 1) and np.isfinite(actions).all()
    )
    # its actor is the student's, not a copy of the teacher's
    teacher = CRLPolicy(root / "teacher")
    assert not np.array_equal(actions, teacher.act(batch, jax.random.PRNGKey(0)))
    result = crl_run.eval_run(student, num_episodes=8)
    assert result["success_any"] == pytest.approx(s["student_success_any"])


def test_bad_teacher_and_existing_student_are_refused(distilled, tmp_path):
    root, _ = distilled
    with pytest.raises(RunError, match=r"is not a run directory \(no config.json\)"):
        distill_run(tmp_path / "nothing", tmp_path / "s", progress=False)
    other = tmp_path / "vla"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"data": "x", "model": {}}))
    with pytest.raises(RunError, match="is not a CRL run.*no critic_depth"):
        distill_run(other, tmp_path / "s", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        distill_run(root / "teacher", root / "student", progress=False)
    with pytest.raises(RunError, match="is the teacher's run directory"):
        distill_run(root / "teacher", root / "teacher", progress=False)
    with pytest.raises(ValueError, match="must not be larger than its teacher"):
        distill_run(
            root / "teacher",
            tmp_path / "s",
            DistillConfig(student=StudentConfig(critic_depth=12)),
            progress=False,
        )
    assert not (tmp_path / "s").exists()  # nothing written on refusal


def test_cli_distill_help_and_error(capsys, tmp_path):
    from anyskill.cli import main

    with pytest.raises(SystemExit) as e:
        main(["distill", "crl", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--student.critic-depth" in out and "TEACHER_RUN" in out
    assert main(["distill", "crl", str(tmp_path / "none"), "--run-dir", str(tmp_path / "s")]) == 2
    assert "not a run directory" in capsys.readouterr().err
