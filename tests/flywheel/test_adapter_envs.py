"""The flywheel beyond the table: adapter envs (gym-pusht, gym-hil-panda) by name, their
scripted experts as policies, a round end to end on each, and `anyskill eval policy --env` on
any env."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from anyskill.algos.recap.value import ValueConfig
from anyskill.algos.vla.config import ModelConfig
from anyskill.envs.adapters import ADAPTER_ENVS, env_names, make_env
from anyskill.envs.adapters.experts import (
    PANDA_EE_STEP,
    panda_action,
    panda_expert,
    panda_goal_distance,
    pusht_action,
    pusht_expert,
)
from anyskill.flywheel.config import FlywheelConfig, flywheel_envs
from anyskill.flywheel.deploy import CorrectorConfig
from anyskill.policies.base import STATE, ChunkPolicy, InputSpec, PolicySpec

pytest.importorskip("gym_pusht")


def test_env_names_cover_jax_and_adapter_envs():
    names = env_names()
    assert {"tabletop-reach", "pointmaze-u", "gym-pusht", "gym-hil-panda"} <= set(names)
    assert {"gym-pusht", "gym-hil-panda"} <= set(flywheel_envs())
    with pytest.raises(ValueError, match="unknown env 'gym-push'. Did you mean 'gym-pusht'"):
        make_env("gym-push")
    env = make_env("gym-pusht")
    obs, info = env.reset(seed=0)
    assert obs["observation.state"].shape == (5,) and info["task"]


def test_the_flywheel_config_names_the_envs_it_runs_on(tmp_path, monkeypatch):
    without = dataclasses.replace(ADAPTER_ENVS["gym-hil-panda"], expert=None)
    monkeypatch.setitem(ADAPTER_ENVS, "gym-hil-panda", without)
    with pytest.raises(ValueError, match="gym-hil-panda has no scripted expert.*--demo-data"):
        FlywheelConfig(env="gym-hil-panda")
    with pytest.raises(ValueError, match="no scripted expert to correct.*--corrector.kind none"):
        FlywheelConfig(env="gym-hil-panda", demo_data=tmp_path)
    FlywheelConfig(env="gym-hil-panda", demo_data=tmp_path, corrector=CorrectorConfig(kind="none"))
    with pytest.raises(ValueError, match="pointmaze-u is not a flywheel env"):
        FlywheelConfig(env="pointmaze-u", demo_data=tmp_path)
    monkeypatch.undo()
    FlywheelConfig(env="gym-hil-panda")  # registered with its expert
    with pytest.raises(ValueError, match="unknown env.*'tabletop-rech'.*tabletop-reach"):
        FlywheelConfig(env="tabletop-rech")
    FlywheelConfig(env="gym-pusht", corrector=CorrectorConfig(kind="human"))  # a person drives
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        FlywheelConfig(env="gym-pusht", max_steps=0)


def test_the_pusht_expert_is_a_policy_of_the_state():
    states = np.array([[100, 100, 300, 300, 0.5], [400, 50, 200, 250, -1.0]], np.float32)
    plain = pusht_expert()
    out = plain.act({STATE: states}, jax.random.key(0))
    assert out.shape == (2, 1, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [pusht_action(s) for s in states])
    noisy = pusht_expert(noise=0.1)
    a, b = (noisy.act({STATE: states}, jax.random.key(k)) for k in (1, 1))
    np.testing.assert_array_equal(a, b)  # the key decides the noise
    c = noisy.act({STATE: states}, jax.random.key(2))
    assert not np.array_equal(a, c) and np.all((c >= 0) & (c <= 512))
    assert noisy.spec.inputs[0].shape == (5,) and noisy.spec.action_horizon == 1


def panda_state(pinch, cube, grip: float = 0.0) -> np.ndarray:
    """A gym-hil-panda state (joints at rest) with the pinch point, cube and gripper command."""
    s = np.zeros(21, np.float32)
    s[14], s[15:18], s[18:21] = grip, pinch, cube
    return s


def test_the_panda_expert_is_a_policy_of_the_state():
    cube = [0.4, 0.1, 0.02]
    far = panda_state([0.5, 0.0, 0.1], cube)  # open, away: over the cube first
    beside = panda_state([0.45, 0.1, 0.03], cube)  # open, low beside it: rise first
    around = panda_state([0.4, 0.1, 0.021], cube)  # open, the cube between the fingers: close
    held = panda_state([0.4, 0.1, 0.05], [0.4, 0.1, 0.05], grip=255)  # closed on it: lift
    lost = panda_state([0.4, 0.1, 0.1], cube, grip=255)  # closed on nothing: open, rise
    states = np.stack([far, beside, around, held, lost])
    out = panda_expert().act({STATE: states}, jax.random.key(0))
    assert out.shape == (5, 1, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [panda_action(s) for s in states])
    a = out[:, 0]
    assert a[0, 0] == -1 and a[0, 1] == 1 and a[0, 3] == 0  # full steps towards it, open
    np.testing.assert_array_equal(a[1], [0, 0, 1, 0])
    assert a[2, 3] == 2 and a[2, 2] == 0
    np.testing.assert_array_equal(a[3], [0, 0, 1, 2])
    np.testing.assert_array_equal(a[4], [0, 0, 1, 0])
    noisy = panda_expert(noise=0.1)
    x, y = (noisy.act({STATE: states}, jax.random.key(k)) for k in (1, 1))
    np.testing.assert_array_equal(x, y)  # the key decides the noise
    z = noisy.act({STATE: states}, jax.random.key(2))
    assert not np.array_equal(x, z)
    assert np.all(np.abs(z[..., :3]) <= 1) and np.all((z[..., 3] >= 0) & (z[..., 3] <= 2))
    assert noisy.spec.inputs[0].shape == (21,) and noisy.spec.action_dim == 4
    # the goal distance: 5 cm to the cube and its whole 10 cm lift; lifted: the grasp's offset
    assert panda_goal_distance(panda_state([0.4, 0.1, 0.07], cube)) == pytest.approx(0.15)
    assert panda_goal_distance(held) == pytest.approx(0.07)


def test_the_panda_expert_picks_the_cube():
    """gym-hil-panda's expert at the flywheel's demonstration noise lifts the cube (measured
    50/50 in ~11 steps at noise 0 and 0.1), and from wherever a policy left the arm and the
    cube (15 random steps, gym-hil's random cube positions; measured 50/50 in ~40 steps)."""
    pytest.importorskip("gym_hil")
    from anyskill.envs.adapters import _panda_distance, _state_with_environment, _Wrapped, evaluate
    from anyskill.envs.adapters.lerobot_sim import GYM_HIL_EE_STEP, make_gym_hil

    assert PANDA_EE_STEP == GYM_HIL_EE_STEP  # the expert's step is the env's
    env = make_env("gym-hil-panda")
    res = evaluate(panda_expert(FlywheelConfig.demo_noise), env, 3, max_steps=100)
    assert res.success_rate == 1.0 and res.mean_length <= 15
    _, info = env.reset(seed=0)
    assert info["goal_distance"] == pytest.approx(0.16, abs=0.01)  # 6 cm away, 10 cm to lift

    env = _Wrapped(
        make_gym_hil(random_block_position=True),
        obs_fn=_state_with_environment,
        info_fn=_panda_distance,
    )
    expert, rng = panda_expert(), np.random.default_rng(0)
    for seed in range(2):
        obs, info = env.reset(seed=seed)
        for t in range(100):
            if t < 15:
                a = rng.uniform(env.action_space.low, env.action_space.high)
            else:
                a = expert.act({STATE: obs["observation.state"][None]}, None)[0, 0]
            obs, _, terminated, _, info = env.step(a.astype(np.float32))
            if terminated:
                break
        assert info["is_success"] and info["goal_distance"] < 0.02, (seed, t)


def tiny_pusht(tmp_path, **kw) -> FlywheelConfig:
    base = dict(
        env="gym-pusht",
        run_dir=tmp_path / "fw",
        rounds=1,
        demos=3,
        max_steps=24,
        init_steps=4,
        episodes_per_round=3,
        policy_steps=3,
        batch_size=8,
        model=ModelConfig(arch="mlp-flow", mlp_width=32, depth=2, width=16, horizon=4),
        value=ValueConfig(steps=4, finetune_steps=2, batch_size=8, hidden=16),
        corrector=CorrectorConfig(fraction=1.0, stall_window=8, correction_steps=6),
        replan_every=4,
        eval_episodes=2,
        videos=True,  # state-only envs have no camera: refused politely, the report still works
        progress=False,
    )
    base.update(kw)
    return FlywheelConfig(**base)


#: adapter env -> its expert's version and its (state, action) sizes
ROUND_ENVS = {"gym-pusht": ("pusht-expert", 5, 2), "gym-hil-panda": ("panda-expert", 21, 4)}


@pytest.mark.parametrize(
    "env",
    [
        # ~20 s on 2 CPU cores; test_the_pusht_expert_corrects_a_policy is the fast part
        pytest.param("gym-pusht", marks=pytest.mark.slow),
        "gym-hil-panda",
    ],
)
def test_a_flywheel_round_on_an_adapter_env(tmp_path, env):
    """Demonstrations of the env's expert (through the rollout), a starting policy read
    from the data's features, one round with the expert correcting, advantages with the env's
    instruction as its own group, evaluation on the host env and the report (learning is not
    asserted at this size)."""
    from anyskill.algos.vla.train import load_config
    from anyskill.data.reader import Dataset
    from anyskill.flywheel import loop

    if env == "gym-hil-panda":
        pytest.importorskip("gym_hil")
    version, state_dim, action_dim = ROUND_ENVS[env]
    cfg = tiny_pusht(tmp_path, env=env)
    out = loop.run_flywheel(cfg)
    ds = Dataset.open(cfg.run_dir / "data")
    ep = ds.episodes
    assert list(ds.info.features) >= ["observation.state", "action"]
    assert "observation.goal" not in ds.info.features  # neither env has a goal
    demo = ep.source == "demonstration"
    assert int(demo.sum()) == cfg.demos and set(ep.policy_version[demo]) == {
        f"{version}(noise=0.1)"
    }
    if env == "gym-hil-panda":  # its expert lifts the cube well within 24 steps
        assert np.all(ep.success[demo] == 1) and np.all(ep.length[demo] < cfg.max_steps)
    rolled = ep.policy_version == "recap-r0"
    assert int(rolled.sum()) == cfg.episodes_per_round
    assert np.all(ep.length <= cfg.max_steps) and np.all(ep.length[~demo] >= 1)
    assert set(ep.source[rolled]) <= {"autonomous", "corrected"}
    iv = np.asarray(ds.columns["intervention"], bool)
    assert iv.any()  # the stall trigger (the env's goal distance) handed episodes to the expert
    m = load_config(cfg.run_dir / "start").model
    assert (m.state_dim, m.action_dim, m.num_cameras) == (state_dim, action_dim, 0)  # the data's

    adv = np.load(cfg.run_dir / "advantage-r1.npz")
    assert len(adv["indicator"]) == ds.num_frames and adv["indicator"][iv].all()
    from anyskill.envs.tabletop import tasks as T

    assert set(adv["family"]) == {len(T.FAMILIES)}  # the env's one instruction, its own group
    rows = {(r["round"], r["method"]): r for r in out.rows}
    want = {(0, "start"), (1, "recap"), (1, "bc"), (1, "filtered"), (1, "deployment (start)")}
    assert want <= set(rows)
    assert rows[(1, "recap")]["episodes"] == cfg.eval_episodes
    assert 0.0 <= rows[(1, "recap")]["intervention_rate"] <= 1.0
    report = (cfg.run_dir / "report.md").read_text()
    assert env in report and not (cfg.run_dir / "videos.json").exists()


@pytest.fixture(scope="module")
def pusht_run(tmp_path_factory):
    """A tiny VLA trained two steps on three short PushT demonstrations."""
    from anyskill.algos.vla.config import TrainConfig
    from anyskill.algos.vla.train import train
    from anyskill.flywheel.artifacts import RunPaths
    from anyskill.flywheel.context import _record_demos

    root = tmp_path_factory.mktemp("pusht")
    cfg = tiny_pusht(root, demos=2, max_steps=12)
    _record_demos(cfg, RunPaths(cfg.run_dir))
    model = ModelConfig(
        arch="vla", width=16, depth=1, heads=2, head_dim=8, action_width=16, horizon=4
    )
    tcfg = TrainConfig(
        data=(cfg.run_dir / "data",), model=model, run_dir=root / "run", steps=2,
        batch_size=4, warmup_steps=1, eval_episodes=0, replan_every=4, progress=False,
    )  # fmt: skip
    train(tcfg, log=lambda *_: None)
    return root / "run"


def test_the_pusht_expert_corrects_a_policy(pusht_run, tmp_path):
    """The flywheel's deployment on a host env: the stall trigger watches PushT's own goal
    distance and hands stalled episodes to the scripted expert, whose actions are recorded
    as interventions; demonstrations were recorded through the rollout, each with its
    expert's version."""
    from anyskill.algos.vla.policy import VLAPolicy
    from anyskill.data.reader import Dataset
    from anyskill.flywheel.deploy import deploy
    from anyskill.flywheel.deployment import RunEnv

    demos = Dataset.open(pusht_run.parent / "fw" / "data")
    assert demos.num_episodes == 2 and list(demos.tasks) == [make_env("gym-pusht").instruction]
    assert set(demos.episodes.policy_version) == {"pusht-expert(noise=0.1)"}

    cfg = tiny_pusht(tmp_path, max_steps=30)
    env = RunEnv.open(cfg, 0)
    assert env.horizon == 30 and env.control_hz == 10.0 and not env.has_camera
    corrector = CorrectorConfig(fraction=1.0, stall_window=4, correction_steps=5, noise=0.0)
    expert = env.corrector_actor(corrector)
    ep = deploy(env.batch_env("t"), VLAPolicy(pusht_run), jax.random.key(0), num_envs=2,
                replan_every=4, corrector=corrector, expert=expert)  # fmt: skip
    live = np.arange(ep.intervention.shape[1])[None] < ep.length[:, None]
    iv = ep.intervention & live
    assert iv.any() and not iv.all()
    # the expert (noise 0) chose exactly the flagged frames' actions
    for b, t in zip(*np.nonzero(iv), strict=True):
        np.testing.assert_allclose(ep.action[b, t], pusht_action(ep.state[b, t]), atol=1e-4)
    with pytest.raises(ValueError, match="pure-JAX env: its corrector's actor"):
        from anyskill.flywheel.deploy import make_corrector
        from anyskill.rollout import expert_policy, rollout

        reach = make_env("tabletop-reach")
        rollout(reach, expert_policy(reach), jax.random.key(0), num_envs=1,
                corrector=make_corrector(corrector, reach, expert=expert))  # fmt: skip


class HoldStill(ChunkPolicy):
    """A policy of the state that never moves the robot: PushT's agent targets where it is,
    the Panda steps nowhere and holds its gripper; every progress comes from the person."""

    def __init__(self, state_dim: int, action_dim: int):
        inputs = (InputSpec(STATE, (state_dim,), "float32"),)
        self.spec = PolicySpec(inputs, action_dim=action_dim, action_horizon=4, control_hz=10)

    def act(self, obs, key):
        s = np.asarray(obs[STATE], np.float32)
        if self.spec.action_dim == 2:  # PushT: the agent's own position
            return np.repeat(s[:, None, :2], 4, axis=1)
        a = np.zeros((len(s), 4, 4), np.float32)
        a[..., 3] = 1.0  # the Panda's gripper: hold
        return a


@pytest.mark.parametrize("env_name", ["gym-pusht", "gym-hil-panda"])
def test_a_person_drives_an_adapter_env_through_its_teleop(tmp_path, env_name):
    """--corrector.kind human on adapter envs: SPACE takes control, the env's teleop turns
    keys into its actions (PushT: a target 25 px right of the agent; Panda: end-effector up,
    then the gripper closing), recorded as interventions; the view is PushT's own rendering,
    the Panda (no renderer in state mode) gets the status only."""
    import io

    from anyskill.flywheel.deploy import deploy
    from anyskill.flywheel.deployment import RunEnv
    from anyskill.flywheel.human import HumanCorrector, ScriptedKeys

    if env_name == "gym-hil-panda":
        pytest.importorskip("gym_hil")
        cfg, dims, keys = (
            FlywheelConfig(env=env_name, run_dir=tmp_path, max_steps=12),
            (21, 4),
            ["r"],
        )
    else:
        cfg, dims, keys = tiny_pusht(tmp_path, max_steps=12), (5, 2), ["d"]
    env = RunEnv.open(cfg, 0)
    out = io.StringIO()
    script = {2: ["space", *keys], 5: ["g"], 8: ["space"]}  # polls = watched steps
    person = HumanCorrector(ScriptedKeys(script), hz=0, out=out, teleop=env.teleop())
    corrector = CorrectorConfig(kind="human", trigger="human", fraction=1.0)
    ep = deploy(env.batch_env("person"), HoldStill(*dims), jax.random.key(0), num_envs=1,
                replan_every=4, corrector=corrector, person=person)  # fmt: skip
    assert ep.length[0] == 12
    np.testing.assert_array_equal(np.nonzero(ep.intervention[0])[0], np.arange(2, 8))
    acts, states = ep.action[0], ep.state[0]
    if env_name == "gym-pusht":
        for t in range(2, 8):  # 25 px right of where the agent was
            np.testing.assert_allclose(acts[t], np.clip(states[t, :2] + [25, 0], 0, 512), atol=1e-3)
        np.testing.assert_allclose(acts[1], states[1, :2], atol=1e-3)  # the still policy
        assert states[8, 0] > states[2, 0] + 20  # the agent went right
        assert "\u2580" in out.getvalue()  # PushT's own rendering shown
    else:
        np.testing.assert_allclose(acts[2:8, :3], [[0, 0, 0.5]] * 6)
        np.testing.assert_allclose(acts[2:5, 3], 1.0)  # the gripper held as it was ...
        np.testing.assert_allclose(acts[5:8, 3], 2.0)  # ... until G closed it
        assert states[8, 17] > states[2, 17] + 0.01  # the pinch point rose
        view = out.getvalue()
        assert "\u2580" not in view and "to goal:" in view and "gripper closing" in view
    assert "control: YOU" in out.getvalue()


def test_eval_policy_on_an_adapter_env(pusht_run, capsys):
    from anyskill.cli import main

    args = ["eval", "policy", str(pusht_run), "--env", "gym-pusht", "--episodes", "2"]
    assert main([*args, "--max-steps", "9"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["env"] == "gym-pusht" and out["episodes"] == 2
    assert out["mean_length"] == 9 and 0.0 <= out["success_rate"] <= 1.0
    # the data it was trained on names its env: --env is the default
    assert main(["eval", "policy", str(pusht_run), "--episodes", "1", "--max-steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["env"] == "gym-pusht"


@pytest.mark.parametrize("env", ["tabletop-reach", "gym-hil-panda"])
def test_eval_policy_refuses_an_env_whose_features_differ(pusht_run, env, capsys, monkeypatch):
    """PushT's state has 5 features; the table's and the Panda's do not: one line naming the
    field, before anything compiles."""
    from anyskill.algos.vla import policy as P
    from anyskill.cli import main

    if env == "gym-hil-panda":
        pytest.importorskip("gym_hil")

    def no_acting(*a, **k):
        raise AssertionError("the policy ran on a mismatched env")

    monkeypatch.setattr(P.VLAPolicy, "act", no_acting)
    assert main(["eval", "policy", str(pusht_run), "--env", env, "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "observation/state" in err and "(5,)" in err and env in err


def test_adapter_env_registry_entries_are_complete():
    for name, entry in ADAPTER_ENVS.items():
        assert entry.name == name and entry.max_steps >= 1 and entry.summary


@pytest.mark.slow  # ~30 s: a whole PushT round plus a refused start
def test_a_flywheel_round_from_given_demonstrations_on_an_env_without_an_expert(
    tmp_path, monkeypatch
):
    """--demo-data: demonstrations recorded elsewhere start the run (copied, the original
    untouched) on an env with no scripted expert (PushT with its expert removed), deployed
    without a corrector; a dataset of another robot or without success labels is refused."""
    from anyskill.data.reader import Dataset
    from anyskill.data.record import record_adapter_expert
    from anyskill.flywheel import loop

    demos = tmp_path / "demos"
    record_adapter_expert(demos, "gym-pusht", episodes=3, max_steps=24)
    before = sorted(p.name for p in demos.rglob("*"))
    monkeypatch.setitem(
        ADAPTER_ENVS, "gym-pusht", dataclasses.replace(ADAPTER_ENVS["gym-pusht"], expert=None)
    )
    none = CorrectorConfig(kind="none")
    cfg = tiny_pusht(tmp_path, demo_data=demos, corrector=none, baselines=False, videos=False)
    out = loop.run_flywheel(cfg)
    assert {r["method"] for r in out.rows} >= {"start", "recap"}
    ds = Dataset.open(cfg.run_dir / "data")
    assert ds.num_episodes == 3 + cfg.episodes_per_round
    assert sorted(p.name for p in demos.rglob("*")) == before  # the original is untouched
    assert Dataset.open(demos).num_episodes == 3

    monkeypatch.undo()
    other = tmp_path / "tabletop"
    from anyskill.data.record import record_expert

    record_expert(other, "tabletop-reach", episodes=2)
    bad = tiny_pusht(tmp_path / "b", demo_data=other, corrector=none)
    with pytest.raises(ValueError, match="observation.state has shape .* gym-pusht records"):
        loop.run_flywheel(bad)
    assert not (bad.run_dir / "data").exists()
