"""End to end: CRL learns to reach goals in the open arena, survives a SIGKILL and resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from anyskill import envs
from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import get_preset


def random_policy_success(env_name: str, episodes: int = 1024) -> float:
    env = envs.make(env_name)
    s = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), episodes))

    def step(s, k):
        s = jax.vmap(env.step)(s, env.random_actions(k, (episodes,)))
        return s, s.success

    keys = jax.random.split(jax.random.PRNGKey(1), env.episode_length)
    _, success = jax.lax.scan(step, s, keys)
    return float(np.asarray(success).any(axis=0).mean())


def test_crl_reaches_goals_in_arena_and_resumes_after_kill(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "anyskill.cli",
        "train",
        "crl",
        "--preset",
        "arena-smoke",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--no-video",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = run_dir / crl_run.METRICS_FILE
    # A safety net against a hung child, not a speed requirement: on a loaded 2-core machine
    # the first checkpoint took more than 300 s.
    deadline = time.time() + 1800
    try:
        # Kill hard as soon as the first epoch's checkpoint exists.
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / crl_run.CHECKPOINT_FILE).exists() and metrics.read_text().strip():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()
        assert metrics.exists() and metrics.read_text().strip(), "no checkpoint after 1800 s"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert 1 <= len(done_before) < 4

    config = get_preset("arena-smoke")
    history = crl_run.train_run(config, run_dir, resume=True, progress=False, log=lambda *_: None)
    assert [r["epoch"] for r in history] == list(range(config.num_epochs))
    steps = [r["env_steps"] for r in history]
    assert steps == sorted(steps) and steps[-1] == config.prefill_steps + config.num_epochs * (
        config.env_steps_per_epoch
    )

    learned = history[-1]["success_any"]
    chance = random_policy_success(config.eval_env_name)
    assert chance < 0.2
    assert learned >= 0.6 and learned >= 3 * chance, (learned, chance)

    # The run's checkpoint evaluates to the same kind of result through `anyskill eval`.
    result = crl_run.eval_run(run_dir, num_episodes=64, video=tmp_path / "v.gif", video_episodes=2)
    assert result["success_any"] >= 0.5
    assert (tmp_path / "v.gif").stat().st_size > 0
