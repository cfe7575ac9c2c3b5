"""The flywheel's driver: metrics, the phase registry, resume after a kill (and a resumed run
equals an uninterrupted one), one improving round."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from anyskill import rundir
from anyskill.algos.recap.value import ValueConfig
from anyskill.algos.vla.config import ModelConfig
from anyskill.data.reader import Dataset
from anyskill.flywheel import loop, phases
from anyskill.flywheel.artifacts import FlywheelState, methods
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.context import RunContext
from anyskill.flywheel.deploy import CorrectorConfig
from anyskill.policies.wrappers import IndicatorConditioned


def test_outcome_metrics_hand_worked():
    m = phases.outcome_metrics(np.array([1, 0, 1, 0]), np.array([10, 40, 30, 40]), control_hz=10.0)
    assert m["success"] == 0.5 and m["failure"] == 0.5
    assert m["time_to_success_s"] == pytest.approx(2.0)  # (10 + 30) / 2 steps at 10 Hz
    # 2 successes in 120 steps = 12 s of robot time
    assert m["throughput_per_h"] == pytest.approx(2 / (12 / 3600))


def test_phases_run_in_the_documented_order():
    # state.json's "done" names these; an old run resumes at the first one not in it
    assert list(phases.PHASES) == [
        "collect",
        "label",
        "value",
        "advantage",
        "policy",
        "evaluate",
        "report",
    ]


def test_state_json_keeps_its_format(tmp_path):
    """A state.json written before the state was a dataclass resumes; the state writes the
    same JSON back."""
    old = {
        "round": 2,
        "done": ["collect", "label"],
        "rows": [{"round": 1, "method": "recap", "success": 0.5, "time_to_success_s": None}],
        "detection": [],
    }
    path = tmp_path / "state.json"
    path.write_text(json.dumps(old))
    st = FlywheelState.read(path)
    assert st.round == 2 and st.done == ("collect", "label") and st.rows[0]["success"] == 0.5
    st.write(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == old
    assert FlywheelState.read(tmp_path / "missing.json") == FlywheelState()


def tiny(tmp_path, **kw) -> FlywheelConfig:
    base = dict(
        env="tabletop-reach",
        run_dir=tmp_path / "fw",
        rounds=1,
        demos=24,
        init_steps=60,
        episodes_per_round=16,
        policy_steps=30,
        batch_size=32,
        model=ModelConfig(arch="mlp-flow", mlp_width=64, depth=2, width=32, horizon=5),
        value=ValueConfig(steps=30, finetune_steps=10, batch_size=32, hidden=32),
        corrector=CorrectorConfig(fraction=1.0, stall_window=10),
        eval_episodes=16,  # = episodes_per_round: the evaluation reuses the compiled deployer
        videos=False,
        progress=False,
    )
    base.update(kw)
    return FlywheelConfig(**base)


@pytest.mark.slow  # ~27 s: flywheel rounds; test_resume_phases covers the driver fast
def test_resume_after_a_kill_mid_round(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    real = phases.PHASES["policy"]
    calls = {"n": 0}

    def killed(ctx, st):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt("killed while training the policies")
        return real(ctx, st)

    monkeypatch.setitem(phases.PHASES, "policy", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.run_flywheel(cfg)
    st = json.loads((cfg.run_dir / "state.json").read_text())
    assert st["round"] == 1 and st["done"] == ["collect", "label", "value", "advantage"]
    with pytest.raises(ValueError, match="--resume"):
        loop.run_flywheel(cfg)  # refuses to overwrite
    with pytest.raises(ValueError, match="--policy-steps was 30, now 31"):
        loop.run_flywheel(dataclasses.replace(cfg, resume=True, policy_steps=31))
    assert json.loads((cfg.run_dir / "state.json").read_text()) == st  # nothing touched
    out = loop.run_flywheel(dataclasses.replace(cfg, resume=True))
    assert out.round == 2 and out.done == ()
    assert json.loads((cfg.run_dir / "state.json").read_text()) == out.to_json()
    ds = Dataset.open(cfg.run_dir / "data")
    # the demonstrations plus exactly one round of rollouts: nothing collected twice
    assert int((ds.episodes.policy_version == "recap-r0").sum()) == cfg.episodes_per_round
    assert set(ds.episodes.source[ds.episodes.policy_version == "recap-r0"]) <= {
        "autonomous",
        "corrected",
    }
    assert int((ds.episodes.source == "demonstration").sum()) == cfg.demos
    assert (cfg.run_dir / "report.md").exists()
    methods = {(r["round"], r["method"]) for r in out.rows}
    assert {(0, "start"), (1, "recap"), (1, "bc"), (1, "filtered")} <= methods
    # every evaluated policy also ran with the corrector on call: how much help it needed
    evaluated = [r for r in out.rows if r["method"] in ("start", "recap", "bc", "filtered")]
    for r in evaluated:
        for k in ("intervention_rate", "corrected_episodes", "assisted_success"):
            assert 0.0 <= r[k] <= 1.0, r
    assert any(r["intervention_rate"] > 0 for r in evaluated)  # the stall trigger fired
    # corrections were recorded as such and are marked positive
    adv = np.load(cfg.run_dir / "advantage-r1.npz")
    iv = np.asarray(ds.columns["intervention"], bool)
    assert iv.any() and adv["indicator"][iv].all()
    assert "q" not in adv

    # --advantage chunk on the same store and value function: A = Q(s, chunk) - V(s)
    ctx = RunContext.open(dataclasses.replace(cfg, advantage="chunk"))
    phases.advantage(ctx, FlywheelState(round=1))
    ch = np.load(cfg.run_dir / "advantage-r1.npz")
    np.testing.assert_allclose(ch["values"], adv["values"], atol=1e-6)
    np.testing.assert_allclose(ch["advantages"], ch["q"] - ch["values"], atol=1e-6)
    assert np.abs(ch["q"] - ch["values"]).max() > 1e-4  # the chunk changes the estimate
    assert ch["indicator"][iv].all()
    assert abs(ch["indicator"][~iv].mean() - cfg.positive_fraction) < 0.1


def run_artifacts(run_dir) -> dict:
    """What a run computed: its state, advantage arrays, detections and trained weights."""
    from pathlib import Path

    run_dir = Path(run_dir)
    out = {"state": json.loads((run_dir / "state.json").read_text())}
    for p in sorted(run_dir.glob("advantage-r*.npz")):
        with np.load(p) as f:
            out[p.name] = {k: f[k] for k in f.files}
    for p in sorted(run_dir.glob("detection-r*.json")):
        out[p.name] = json.loads(p.read_text())
    for p in [run_dir / "value.msgpack", *sorted((run_dir / "policies").glob("*.msgpack"))]:
        out[p.name] = p.read_bytes()
    return out


@pytest.mark.slow  # two tiny two-round runs (~60 s on 2 CPU cores)
def test_a_resumed_run_computes_what_an_uninterrupted_run_does(tmp_path, monkeypatch):
    """Same seed, same settings: a run killed in round 2's value phase and resumed gives the
    same evaluation rows, advantages, held-out detection and weights, bit for bit, as a run
    that was never interrupted (the phases' artifacts are all their outputs)."""
    cfg = tiny(tmp_path / "a", rounds=2, eval_interventions=False)
    loop.run_flywheel(cfg)
    whole = run_artifacts(cfg.run_dir)

    real = phases.PHASES["value"]

    def killed(ctx, st):
        if st.round == 2:
            raise KeyboardInterrupt("killed in round 2's value phase")
        return real(ctx, st)

    other = dataclasses.replace(cfg, run_dir=tmp_path / "b" / "fw")
    monkeypatch.setitem(phases.PHASES, "value", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.run_flywheel(other)
    monkeypatch.setitem(phases.PHASES, "value", real)
    loop.run_flywheel(dataclasses.replace(other, resume=True))
    resumed = run_artifacts(other.run_dir)
    assert sorted(resumed) == sorted(whole) and "detection-r2.json" in whole
    assert resumed["state"] == whole["state"]
    for name, want in whole.items():
        if isinstance(want, dict) and name.endswith(".npz"):
            for k, a in want.items():
                np.testing.assert_array_equal(resumed[name][k], a, err_msg=f"{name}:{k}")
        else:
            assert resumed[name] == want, name


@pytest.mark.slow
def test_one_round_on_reach_improves_success(tmp_path):
    """A starting VLA from 40 demonstrations, then one flywheel round (64 episodes with the
    corrector on call): RECAP's success must beat the starting policy's."""
    cfg = FlywheelConfig(
        env="tabletop-reach",
        run_dir=tmp_path / "fw",
        rounds=1,
        demos=40,
        init_steps=300,
        episodes_per_round=64,
        policy_steps=300,
        value=ValueConfig(steps=300, finetune_steps=100, batch_size=64),
        eval_episodes=64,
        baselines=False,
        videos=False,
        progress=False,
    )
    out = loop.run_flywheel(cfg)
    rate = {(r["round"], r["method"]): r.get("success") for r in out.rows}
    assert rate[(1, "recap")] > rate[(0, "start")] + 0.1, rate


@pytest.mark.slow  # ~18 s: a whole flywheel round
def test_a_person_at_the_keyboard_corrects_through_the_loop(tmp_path, monkeypatch):
    """``--corrector.kind human`` with scripted keys: the person's segment is stored as a
    corrected episode with its intervention frames, each episode as soon as it ends, so a
    kill in the middle of the round loses only the episode in progress."""
    from anyskill.flywheel.human import HumanCorrector, ScriptedKeys

    class Killed(ScriptedKeys):
        def poll(self):
            if self.polls == 45:  # in the second episode (reach episodes are <= 40 steps)
                raise KeyboardInterrupt("the person pressed Ctrl-C")
            return super().poll()

    def stop(ctx, st):
        raise KeyboardInterrupt("stop after collecting")

    monkeypatch.setitem(phases.PHASES, "value", stop)
    corrector = CorrectorConfig(kind="human", trigger="human", fraction=1.0)
    cfg = tiny(tmp_path, episodes_per_round=3, demos=8, init_steps=10, corrector=corrector)
    person = HumanCorrector(Killed({0: ["space", "d"], 6: ["space"]}), hz=0)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C"):
        loop.run_flywheel(cfg, human=person)
    ds = Dataset.open(cfg.run_dir / "data")
    assert list(ds.episodes.source[ds.episodes.policy_version == "recap-r0"]) == ["corrected"]

    again = HumanCorrector(ScriptedKeys({}), hz=0)
    with pytest.raises(KeyboardInterrupt, match="after collecting"):
        loop.run_flywheel(dataclasses.replace(cfg, resume=True), human=again)
    ds = Dataset.open(cfg.run_dir / "data")
    rolled = ds.episodes.policy_version == "recap-r0"
    assert list(ds.episodes.source[rolled]) == ["corrected", "autonomous", "autonomous"]
    iv = np.asarray(ds.columns["intervention"], bool)
    assert int(iv.sum()) == 6
    assert again.keys.polls > 0  # the resumed round was watched from its second episode


def test_a_human_corrector_needs_a_terminal(tmp_path, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO())
    cfg = tiny(tmp_path, corrector=CorrectorConfig(kind="human"))
    with pytest.raises(ValueError, match="interactive terminal"):
        loop.run_flywheel(cfg)
    assert not cfg.run_dir.exists()  # refused before any work


@pytest.mark.slow  # a second flywheel round end to end (~60-200 s); the unit tests cover the pieces
@pytest.mark.parametrize("indicator", ["embedding", "modulation"])
def test_a_round_with_the_indicator_as_an_input(tmp_path, indicator):
    """``--indicator embedding`` / ``modulation``: RECAP learns the indicator input (it leaves
    zero), the baselines, which never see it, keep it at zero, and the prompts stay plain."""
    cfg = tiny(
        tmp_path,
        indicator=indicator,
        eval_interventions=False,
        model=ModelConfig(
            arch="vla", width=32, depth=1, heads=2, head_dim=8, action_width=16, horizon=5
        ),
    )
    out = loop.run_flywheel(cfg)
    assert {r["method"] for r in out.rows} >= {"start", "recap", "bc", "filtered"}
    ctx = RunContext.open(dataclasses.replace(cfg, resume=True))
    recap = ctx.deployment.policy(ctx.policy_params("recap"), recap=True)
    assert isinstance(recap, IndicatorConditioned) and recap.kind == "input"  # plain prompts
    names = ["indicator"] + (["indicator_mod"] if indicator == "modulation" else [])
    for name in names:
        emb = {n: np.abs(ctx.policy_params(n)["params"][name]).max() for n in methods(cfg)}
        assert emb["recap"] > 0 and emb["bc"] == 0 and emb["filtered"] == 0, (name, emb)


@pytest.mark.parametrize("indicator", ["embedding", "modulation"])
def test_an_input_indicator_needs_the_vla(tmp_path, indicator):
    with pytest.raises(ValueError, match=f"--indicator {indicator} needs --model.arch vla"):
        tiny(tmp_path, indicator=indicator)
    with pytest.raises(ValueError, match="indicator must be one of"):
        tiny(tmp_path, indicator="words")


def test_config_changes_names_what_a_resume_would_change():
    default = {"indicator": "prompt", "rounds": 3, "value": {"steps": 600}}
    saved = {"rounds": 3, "value": {"steps": 600}}  # an older run: no indicator field
    assert loop.config_changes(saved, {"rounds": 5, "value": {"steps": 600}}, default) == []
    now = {"indicator": "embedding", "rounds": 3, "value": {"steps": 700}}
    assert loop.config_changes(saved, now, default) == [
        ("indicator", "prompt", "embedding"),
        ("value.steps", 600, 700),
    ]


def test_saved_config_round_trips_a_runs_settings(tmp_path):
    cfg = tiny(tmp_path, advantage="chunk", corrector=CorrectorConfig(fraction=0.5))
    (cfg.run_dir).mkdir(parents=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(rundir.config_to_json(cfg)))
    assert loop.saved_config(cfg.run_dir) == cfg
    with pytest.raises(FileNotFoundError, match="no config.json"):
        loop.saved_config(tmp_path / "nothing")
