"""Built-in servable policies and the name/checkpoint registry."""

from __future__ import annotations

import numpy as np
import pytest

from anyskill.policies.base import Policy
from anyskill.policies.registry import PolicyLoadError, load_policy, make_policy, resolve


def test_reach_controller_plans_toward_the_named_zone():
    p = make_policy("expert:tabletop-reach", aim_jitter=0.0)
    assert isinstance(p, Policy)
    spec = p.spec
    obs = np.zeros(spec.inputs[0].shape, np.float32)
    zones = np.array([[-0.72, -0.72], [-0.72, 0.72], [0.72, -0.72], [0.72, 0.72]], np.float32)
    obs[-8:] = zones.reshape(-1)  # red, green, blue, yellow
    obs[:2] = [0.5, -0.5]  # pusher near the blue zone
    batch = [
        spec.validate({"observation/state": obs, "prompt": "go to the blue area"}),
        spec.validate({"observation/state": obs, "prompt": "head over to the green region"}),
        spec.validate({"observation/state": obs, "prompt": "dance"}),
    ]
    out = p.infer(batch)
    assert out.shape == (3, spec.action_horizon, 2) and out.dtype == np.float32
    assert np.all(np.sign(out[0, 0]) == [1, -1]) and np.all(np.sign(out[1, 0]) == [-1, 1])
    assert np.all(np.abs(out) <= 1.0) and np.all(out[2] == 0)  # no zone named: hold
    # the plan integrates its own commands: it slows down as it nears the zone
    assert np.linalg.norm(out[0, -1]) < np.linalg.norm(out[0, 0])


def test_random_mlp_batches_and_pads():
    p = make_policy("random-mlp", width=8, depth=1, image_size=8)
    obs = {
        "observation/state": np.ones(54, np.float32),
        "observation/image": np.full((8, 8, 3), 100, np.uint8),
        "prompt": "x",
    }
    one = p.infer([p.spec.validate(obs)])
    three = p.infer([p.spec.validate(obs)] * 3)  # padded to 4 inside
    assert three.shape == (3, 10, 2)
    np.testing.assert_allclose(three[2], one[0], atol=1e-6)


def test_unknown_policy_name_suggests():
    with pytest.raises(ValueError, match="random-mlp"):
        make_policy("random-mlpp")


def test_checkpoint_plug_point_names_the_problem(tmp_path):
    with pytest.raises(PolicyLoadError, match="not a format anyskill can serve"):
        load_policy(tmp_path)
    with pytest.raises(PolicyLoadError, match="no such file"):
        load_policy(tmp_path / "missing")
    with pytest.raises(ValueError, match="Did you mean"):
        resolve("expert:tabletop-reech")


def test_policy_runs_are_recognised_by_their_config(tmp_path):
    import json

    from anyskill.checkpoint import CheckpointError

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": ["demos"], "model": {"arch": "vla"}}))
    # recognised as a policy run; the missing checkpoint is then named by the run's loader
    with pytest.raises(CheckpointError, match="needs config.json and checkpoint.msgpack"):
        load_policy(run)
    other = tmp_path / "crl"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"env": "pointmaze-u"}))
    with pytest.raises(PolicyLoadError, match="not a format anyskill can serve"):
        load_policy(other)
