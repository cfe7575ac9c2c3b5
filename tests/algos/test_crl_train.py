"""The jitted training pieces: sharding over forced host devices, non-finite loss handling."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import TINY_OVERRIDES

from anyskill import checkpoint
from anyskill.algos.crl import run as crl_run

SHARDED = textwrap.dedent(
    """
    import dataclasses, json, sys, jax, numpy as np
    from anyskill.algos.crl.config import get_preset
    from anyskill.algos.crl.train import make_train
    assert jax.device_count() == 2, jax.devices()
    cfg = dataclasses.replace(get_preset("arena-smoke"), **json.loads(sys.argv[1]))
    tr = make_train(cfg)
    state = jax.jit(tr.init_state)(jax.random.PRNGKey(0))
    sh = tr.state_sharding(state)
    state = jax.device_put(state, sh)
    state = jax.jit(tr.prefill, out_shardings=sh)(state)
    state, m = jax.jit(tr.train_epoch, out_shardings=(sh, None))(state)
    ev = jax.jit(tr.evaluate)(state.params, jax.random.PRNGKey(1))
    obs, buf = state.env_state.obs, state.buffer.data.obs
    # env axis split over both devices; buffer split along its env axis (axis 1)
    assert len(obs.sharding.device_set) == 2 and obs.addressable_shards[0].data.shape[0] == 4
    assert buf.addressable_shards[0].data.shape[1] == 4
    assert all(np.isfinite(float(v)) for v in {**m, **ev}.values())
    print("OK", int(state.env_steps))
    """
)


def test_training_shards_over_forced_host_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run(
        [sys.executable, "-c", SHARDED, json.dumps(TINY_OVERRIDES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, tiny_config):
    real = crl_run._to_python
    calls = {"n": 0}

    def poisoned(metrics):
        out = real(metrics)
        if "critic_loss" in out:
            calls["n"] += 1
            if calls["n"] == 2:  # second epoch diverges
                out["critic_loss"] = float("nan")
        return out

    monkeypatch.setattr(crl_run, "_to_python", poisoned)
    with pytest.raises(crl_run.NonFiniteLoss, match="non-finite critic_loss=nan at epoch 1"):
        crl_run.train_run(tiny_config, tmp_path, progress=False, log=lambda *_: None)
    meta = checkpoint.load_meta(tmp_path / crl_run.CHECKPOINT_FILE)
    assert meta["epoch"] == 0
    lines = (tmp_path / crl_run.METRICS_FILE).read_text().splitlines()
    assert len(lines) == 1
