"""The flywheel's real-robot mode: robots over loopback feed one round of the store."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from serve_helpers import CountingPolicy  # noqa: E402

from anyskill.data.format import vector_feature  # noqa: E402
from anyskill.data.reader import Dataset  # noqa: E402
from anyskill.data.writer import EpisodeWriter  # noqa: E402
from anyskill.flywheel.robots import RobotsConfig, collect_from_robots, end_round  # noqa: E402
from anyskill.serve import wire  # noqa: E402
from anyskill.serve.episodes import EpisodeUploader  # noqa: E402
from anyskill.serve.runtime import _PLAIN, connect  # noqa: E402


def make_store(root: Path) -> Path:
    features = {"observation.state": vector_feature(4), "action": vector_feature(2)}
    EpisodeWriter.create(root, features, fps=10).close()
    return root


def robot(url: str, n_episodes: int, disconnect_mid_episode: bool, log: list):
    """A scripted robot: asks the policy for chunks, executes 6 steps per episode, uploads;
    with ``disconnect_mid_episode`` it drops off after its episodes, in the middle of one
    more (which is never sent)."""
    link = connect(url, proxy=None, **_PLAIN)  # the policy channel, as an openpi client uses it
    wire.unpack(link.recv(timeout=10))  # metadata
    with EpisodeUploader(url) as up:
        for ep in range(n_episodes + disconnect_mid_episode):
            states, actions = [], []
            for t in range(6):
                state = np.full(4, ep + t, np.float32)
                obs = {
                    "observation/state": state,
                    "prompt": "go",
                    "observation/image": np.zeros((8, 8, 3), np.uint8),
                }
                link.send(wire.pack(obs))
                chunk = wire.unpack(link.recv(timeout=10))["actions"]
                states.append(state)
                actions.append(np.asarray(chunk)[0])
                if disconnect_mid_episode and ep == n_episodes and t == 2:
                    link.close()
                    log.append("dropped")
                    return  # the uploader closes: the half episode is never sent
            frames = {"observation.state": np.stack(states), "action": np.stack(actions)}
            iv = np.arange(6) >= 4 if ep % 2 else None  # a person took over at the end
            log.append(up.send(frames, "go", ep % 2 == 0, iv))
    link.close()


def test_a_round_from_two_robots_one_dropping_out_mid_episode(tmp_path):
    data = make_store(tmp_path / "data")
    logs: dict[str, list] = {"a": [], "b": []}
    threads = []

    def start_robots(url):
        for name, n, drop in (("a", 3, False), ("b", 2, True)):
            t = threading.Thread(target=robot, args=(url, n, drop, logs[name]), daemon=True)
            t.start()
            threads.append(t)

    result = collect_from_robots(
        CountingPolicy(),
        data,
        "recap-r0",
        episodes=5,
        have=0,
        config=RobotsConfig(port=0, wait_s=60),
        run_dir=tmp_path,
        log=lambda m: None,
        on_listening=start_robots,
    )
    for t in threads:
        t.join(10)
    assert result.reason == "episodes" and result.stored == 5
    assert logs["b"][-1] == "dropped" and len(logs["b"]) == 3  # 2 stored, then dropped
    ds = Dataset.open(data)
    ep = ds.episodes
    assert ds.num_episodes == 5 and set(ep.policy_version) == {"recap-r0"}
    assert all(n == 6 for n in ep.length)  # only whole episodes
    iv = np.asarray(ds.columns["intervention"], bool)
    corrected = [bool(iv[s:e].any()) for s, e in zip(ep.start, ep.stop, strict=True)]
    assert sum(corrected) == 2  # episode 1 of each robot had a takeover


def test_end_round_command_ends_with_what_arrived(tmp_path):
    data = make_store(tmp_path / "data")

    def one_then_end(url):
        def go():
            robot(url, 1, False, [])
            end_round(tmp_path)

        threading.Thread(target=go, daemon=True).start()

    result = collect_from_robots(
        CountingPolicy(),
        data,
        "recap-r1",
        episodes=10,
        have=0,
        config=RobotsConfig(port=0, wait_s=60),
        run_dir=tmp_path,
        log=lambda m: None,
        on_listening=one_then_end,
    )
    assert result.reason == "command" and result.stored == 1
    assert not (tmp_path / "END_ROUND").exists()
    assert Dataset.open(data).num_episodes == 1


def test_a_run_without_a_simulator_names_what_it_needs(tmp_path):
    from anyskill.flywheel.config import FlywheelConfig
    from anyskill.flywheel.deploy import CorrectorConfig

    with pytest.raises(ValueError, match="--env robot runs without a simulator") as e:
        FlywheelConfig(env="robot")
    assert "--deploy robots" in str(e.value) and "--demo-data" in str(e.value)
    assert "--corrector.kind none" in str(e.value)
    ok = FlywheelConfig(
        env="robot",
        deploy="robots",
        demo_data=tmp_path,
        corrector=CorrectorConfig(kind="none"),
    )
    assert not ok.simulated and FlywheelConfig().simulated


@pytest.mark.slow  # ~50 s each: a whole flywheel round (demos, training, value, evaluation)
@pytest.mark.parametrize("env", ["tabletop-reach", "robot"])
def test_a_flywheel_round_collected_by_two_simulated_robots(tmp_path, env):
    """``--deploy robots``: the round's policy is served, two simulated robots (the real
    robot-side runtime over loopback) run episodes and upload them; robot b is switched off
    in the middle of an episode. The round ends on command once both stopped; every episode
    either robot finished is in the store with the round's policy version, the unfinished one
    is not, and the rest of the loop (value, advantages, policy, evaluation, report) runs.
    ``--env robot``: the same with no simulator in the flywheel at all — demonstrations from
    a dataset recorded on the robots, the horizon and rate from it, the round's robot
    deployment the only measure."""
    import dataclasses as dc

    from test_loop import tiny

    from anyskill.data.record import record_expert
    from anyskill.flywheel import loop
    from anyskill.flywheel.deploy import CorrectorConfig
    from anyskill.serve.robot import SimRobot

    sim_free = {}
    if env == "robot":  # demonstrations recorded on the robot beforehand
        record_expert(tmp_path / "demos", "tabletop-reach", episodes=24, seed=5)
        sim_free = dict(
            env="robot", demo_data=tmp_path / "demos", corrector=CorrectorConfig(kind="none")
        )
    cfg = dc.replace(
        tiny(tmp_path),
        deploy="robots",
        robots=RobotsConfig(port=0, wait_s=300),
        episodes_per_round=100,  # more than the robots run: the round ends on command
        baselines=False,
        eval_interventions=False,
        eval_episodes=8,
        **sim_free,
    )
    robots = {"a": SimRobot("tabletop-reach"), "b": SimRobot("tabletop-reach")}
    plans = {
        "a": {"episodes": 2, "seed": 1},
        "b": {"episodes": 5, "seed": 2, "power_off_after_steps": 45},
    }
    results = {}

    def start(url):
        def go(name):
            results[name] = robots[name].run(url, upload=True, **plans[name])

        def run_all():
            threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in robots]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            end_round(cfg.run_dir)

        threading.Thread(target=run_all, daemon=True).start()

    out = loop.run_flywheel(cfg, robots_listening=start)
    a, b = results["a"], results["b"]
    assert a.episodes == 2
    # b ran 45 control steps (episodes of reach last at most 40): it finished at least one
    # episode and was switched off inside a later one, which it never sent
    assert 1 <= b.episodes < 5 and b.steps < 45
    ds = Dataset.open(cfg.run_dir / "data")
    ep = ds.episodes
    round1 = ep.policy_version == "recap-r0"
    assert int(round1.sum()) == a.episodes + b.episodes
    assert int(ep.length[round1].sum()) == a.steps + b.steps  # whole episodes only
    assert set(ep.source[round1]) <= {"autonomous", "corrected"}
    report = (cfg.run_dir / "report.md").read_text()
    evaluated = {(r["round"], r["method"]) for r in out.rows}
    if env == "robot":  # nothing evaluated in a simulator: the robots' round is the measure
        assert evaluated == {(1, "deployment (start)")} and "No simulator" in report
        assert ds.num_episodes == 24 + int(round1.sum())
    else:
        assert (1, "recap") in evaluated
