"""The flywheel's run directory: phases are idempotent across a kill, its config.json and
state.json are loaded strictly, nonsense settings are refused (issue 22). No training: the
value function, the data and the other phases are cheap stand-ins, so only the driver's logic
and the label and value phases run."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from anyskill import checkpoint
from anyskill.algos.recap import recap as R
from anyskill.algos.recap.value import ValueConfig
from anyskill.flywheel import loop, phases
from anyskill.flywheel.artifacts import RunPaths
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.context import RunContext

EP_LEN, PER_ROUND, DEMOS = 5, 4, 4


def fake_store(collected_rounds: int):
    """Demonstrations, then ``PER_ROUND`` rollouts per collected round (policy_version
    ``recap-r{k-1}``), every other one a failure."""
    versions = [""] * DEMOS + [
        f"recap-r{r}" for r in range(collected_rounds) for _ in range(PER_ROUND)
    ]
    n = len(versions)
    start = np.arange(n) * EP_LEN
    episodes = SimpleNamespace(
        policy_version=np.array(versions, dtype=object),
        start=start,
        stop=start + EP_LEN,
        length=np.full(n, EP_LEN),
        success=np.array([1 - i % 2 for i in range(n)]),
    )
    return SimpleNamespace(
        episodes=episodes,
        num_episodes=n,
        num_frames=n * EP_LEN,
        columns={"intervention": np.zeros(n * EP_LEN, bool)},
    )


@dataclasses.dataclass(frozen=True)
class FakeValueFunction:
    """``w`` counts the trainings the parameters went through."""

    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def init(self, key, policy_params=None):
        return {"w": jnp.zeros(1)}

    def train(self, params, data, targets, steps, seed=0, progress=None):
        self.calls.append(data.ds.num_episodes)
        return {"w": params["w"] + 1}, np.ones(steps, np.float32)


def keep(ctx, st):
    return st


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A flywheel whose every phase but label and value is a stand-in."""
    w = SimpleNamespace(collected=0, vf=FakeValueFunction(), predicted=[])

    def open_run(cls, cfg, human=None):
        env = SimpleNamespace(horizon=EP_LEN)
        return cls(cfg, RunPaths(cfg.run_dir), None, None, {"w": jnp.zeros(1)}, w.vf, env, None)

    def collect(ctx, st):
        w.collected = max(w.collected, st.round)
        return st

    def predict_values(vf, value_params, data, frames=None, **kw):
        w.predicted.append((float(value_params["w"][0]), np.asarray(frames)))
        return np.full(len(frames), -0.5, np.float32)

    monkeypatch.setattr(RunContext, "open", classmethod(open_run))
    monkeypatch.setattr(RunContext, "dataset", lambda self: fake_store(w.collected))
    monkeypatch.setattr(
        RunContext,
        "training_data",
        lambda self, seed, **kw: SimpleNamespace(ds=fake_store(w.collected)),
    )
    monkeypatch.setattr(R, "predict_values", predict_values)
    monkeypatch.setitem(phases.PHASES, "collect", collect)
    for name in ("advantage", "policy", "evaluate", "report"):
        monkeypatch.setitem(phases.PHASES, name, keep)
    w.cfg = FlywheelConfig(
        run_dir=tmp_path / "fw",
        rounds=2,
        value=ValueConfig(steps=3, finetune_steps=2),
        progress=False,
        videos=False,
    )
    return w


def test_value_phase_is_not_redone_after_a_kill_before_state_json(world, monkeypatch):
    real = checkpoint.save

    def save(path, tree, meta):
        real(path, tree, meta)
        if path.name == "value.msgpack" and meta["round"] == 2:
            raise KeyboardInterrupt("killed between value.msgpack and state.json")

    monkeypatch.setattr(checkpoint, "save", save)
    with pytest.raises(KeyboardInterrupt):
        loop.run_flywheel(world.cfg)
    st = json.loads((world.cfg.run_dir / "state.json").read_text())
    assert st["round"] == 2 and "value" not in st["done"]
    assert len(world.vf.calls) == 2

    monkeypatch.setattr(checkpoint, "save", real)
    out = loop.run_flywheel(dataclasses.replace(world.cfg, resume=True))
    assert out.round == 3
    # trained once per round: round 1 on demos + round-1 rollouts, round 2 on everything
    assert world.vf.calls == [DEMOS + PER_ROUND, DEMOS + 2 * PER_ROUND]
    # early-failure detection of round 2 came only from round 1's value function (w == 1)...
    assert world.predicted and {w for w, _ in world.predicted} == {1.0}
    det = json.loads((world.cfg.run_dir / "detection-r2.json").read_text())
    # ...on the round-2 rollouts, which that function never saw
    seen = set(range(det["value_trained_on_episodes"]))
    assert det["value_round"] == 1 and det["episodes"] == PER_ROUND
    assert seen.isdisjoint(det["episode_ids"]) and len(det["episode_ids"]) == PER_ROUND
    meta = checkpoint.load_meta(world.cfg.run_dir / "value.msgpack")
    assert meta["round"] == 2 and meta["trained_on_episodes"] == DEMOS + 2 * PER_ROUND


def test_resume_refuses_a_config_json_with_an_unknown_key_or_wrong_type(world):
    loop.run_flywheel(dataclasses.replace(world.cfg, rounds=1))
    path = world.cfg.run_dir / "config.json"
    good = json.loads(path.read_text())
    resume = dataclasses.replace(world.cfg, rounds=1, resume=True)
    for bad, match in [
        ({**good, "roundz": 2}, r"unknown field 'roundz'.*'rounds'"),
        ({**good, "value": {**good["value"], "steps": "3"}}, r"'value.steps' must be an integer"),
        ({k: v for k, v in good.items() if k != "demos"}, r"field 'demos' is missing"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match) as e:
            loop.run_flywheel(resume)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
        assert json.loads(path.read_text()) == bad  # not overwritten
    path.write_text('{"env": "tabletop-reach",')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON.*line 1 column 26"):
        loop.run_flywheel(resume)
    path.write_text(json.dumps(good))
    state = world.cfg.run_dir / "state.json"
    for bad, match in [
        ("{", r"state.json: not valid JSON"),
        ('{"round": "2", "done": [], "rows": [], "detection": []}', r"'round' must be an integer"),
        ('{"round": 2, "done": [3], "rows": [], "detection": []}', r"'done\[0\]' must be a str"),
        ('{"round": 2, "done": [], "rows": []}', r"field 'detection' is missing"),
    ]:
        state.write_text(bad)
        with pytest.raises(ValueError, match=match):
            loop.run_flywheel(resume)
        assert state.read_text() == bad  # not overwritten


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(init_steps=0), "init_steps must be >= 1, got 0"),
        (dict(policy_steps=-5), "policy_steps must be >= 1, got -5"),
        (dict(lr=-1e-4), "lr must be >= 0, got -0.0001"),
        (dict(demo_noise=-0.1), "demo_noise must be >= 0, got -0.1"),
        (dict(eval_episodes=0), "eval_episodes must be >= 1, got 0"),
        (dict(value=dict(steps=0)), "value steps must be >= 1, got 0"),
        (dict(value=dict(lr=-1.0)), "value lr must be >= 0, got -1.0"),
        (dict(corrector=dict(noise=-0.05)), "corrector noise must be >= 0, got -0.05"),
    ],
)
def test_flywheel_config_refuses_nonsense(kw, match):
    from anyskill.flywheel.deploy import CorrectorConfig

    nested = {"value": ValueConfig, "corrector": CorrectorConfig}
    with pytest.raises(ValueError, match=match):
        FlywheelConfig(**{k: nested[k](**v) if k in nested else v for k, v in kw.items()})


def test_demo_refuses_zero_steps(tmp_path, capsys):
    from anyskill.cli import main

    assert main(["demo", "--run-dir", str(tmp_path / "d"), "--policy-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "policy_steps must be >= 1, got 0" in err and not (tmp_path / "d").exists()
