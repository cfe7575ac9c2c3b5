"""The flywheel on Ray (issue 26): config checks and actors without Ray; then a local Ray
cluster on loopback (started and stopped here) running a tiny fleet with a worker killed
mid-batch, the learner killed and resumed, and the parameter server gone."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from anyskill.algos.recap.value import ValueConfig
from anyskill.algos.vla.config import ModelConfig
from anyskill.data import meta
from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.flywheel import fleet as F
from anyskill.flywheel.config import FleetConfig, FlywheelConfig
from anyskill.flywheel.deploy import CorrectorConfig

# Ray reads the authentication mode when it is imported (below): token, as anyskill runs it
os.environ.setdefault("RAY_AUTH_MODE", "token")

# ---- without Ray ---------------------------------------------------------------------------


def test_fleet_config_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"fleet.workers must be >= 1, got 0"):
        FleetConfig(workers=0)
    with pytest.raises(ValueError, match=r"fleet.pull_timeout_s must be > 0"):
        FleetConfig(pull_timeout_s=0)
    with pytest.raises(ValueError, match=r"fleet.min_new_episodes .* >= 0"):
        FleetConfig(min_new_episodes=-1)
    with pytest.raises(ValueError, match=r"--corrector.kind expert or none"):
        FlywheelConfig(cluster="local", corrector=CorrectorConfig(kind="human"))
    with pytest.raises(ValueError, match=r"--corrector.trigger stall"):
        FlywheelConfig(cluster="local", corrector=CorrectorConfig(trigger="value"))
    with pytest.raises(ValueError, match=r"empty address"):
        FlywheelConfig(cluster=" ")
    FlywheelConfig(cluster="local")  # the defaults are a valid fleet


def test_token_authentication_stays_on(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ValueError, match="RAY_AUTH_MODE=disabled.*token authentication on"):
        F.require_token_auth()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    F.require_token_auth()


def test_parameter_server_hands_out_only_newer_versions():
    ps = F.ParameterServer()
    assert ps.latest(0) == (0, None)
    assert ps.publish(2, b"v2") == 2
    assert ps.publish(1, b"v1") == 2  # a late, older publish never replaces a newer one
    assert ps.latest(0) == (2, b"v2") and ps.latest(2) == (2, None)


def test_worker_threads_go_to_the_worker_environment():
    env = F.worker_env(1)
    assert "intra_op_parallelism_threads=1" in env["XLA_FLAGS"] and env["OMP_NUM_THREADS"] == "1"
    assert "XLA_FLAGS" not in F.worker_env(0)


# ---- on a local Ray cluster ------------------------------------------------------------------

ray = pytest.importorskip(
    "ray", reason="the cluster extra is not installed (pip install -e '.[cluster]')"
)


@pytest.fixture(scope="module")
def cluster():
    """A Ray of 2 CPUs on loopback with token authentication, for this module only."""
    F.require_token_auth()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="anyskill-tests",
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def listening_addresses(root: int) -> set[str]:
    """Local addresses of the TCP sockets that processes descended from ``root`` listen on
    (Linux /proc), as ``ip`` strings."""
    import ipaddress

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = list(children.get(root, [])), set()
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    inodes = set()
    for pid in tree:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(cols[1].split(":")[0])
            # /proc/net stores each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(words)
            out.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_local_ray_listens_on_loopback_only(cluster):
    import ray._private.ray_constants as rc

    assert F.loopback_only() and not rc.ENABLE_RAY_CLUSTER
    addrs = listening_addresses(os.getpid())
    assert addrs, "found no socket of Ray's processes"
    assert addrs <= {"127.0.0.1", "::1"}, addrs


def tiny(tmp_path: Path, **fleet) -> FlywheelConfig:
    f = dict(workers=2, envs_per_worker=8, episodes=32, publish_every=10, min_new_episodes=8)
    f.update(fleet)
    return FlywheelConfig(
        env="tabletop-reach",
        run_dir=tmp_path / "fw",
        demos=16,
        init_steps=40,
        batch_size=32,
        model=ModelConfig(arch="mlp-flow", mlp_width=64, depth=2, width=32, horizon=5),
        value=ValueConfig(steps=20, finetune_steps=10, batch_size=32, hidden=32),
        corrector=CorrectorConfig(fraction=1.0, stall_window=10),
        eval_episodes=8,
        videos=False,
        progress=False,
        awr_beta=0.05,
        deploy_with="awr",
        cluster="local",
        fleet=FleetConfig(**f, status_every_s=2.0, pull_timeout_s=2.0),
    )


def fleet_episodes(cfg: FlywheelConfig):
    ds = Dataset.open(cfg.run_dir / "data")
    ep = ds.episodes
    rows = [i for i, v in enumerate(ep.policy_version) if str(v).startswith("fleet-v")]
    return ds, rows


def test_a_worker_killed_mid_batch_loses_only_its_batch(cluster, tmp_path):
    cfg = tiny(tmp_path)
    killed = {}

    def on_cycle(version, collector):
        if version == 1:  # kill worker 1's process while it runs a batch; Ray restarts it
            # (no call into it first: an actor's calls queue behind the batches it runs)
            killed["pending"] = sum(i == 1 for i, _ in collector.pending.values())
            ray.kill(collector.workers[1], no_restart=False)

    result = F.run_fleet(cfg, on_cycle=on_cycle)
    assert killed.get("pending"), "worker 1 had no batch running when it was killed"
    validate(cfg.run_dir / "data")  # nothing in the store is lost or corrupted
    ds, rows = fleet_episodes(cfg)
    assert len(rows) == result.stored == cfg.fleet.episodes  # the budget, despite the death
    w1 = result.workers[1]
    assert w1["deaths"] == 1 and w1["lost"] == cfg.fleet.envs_per_worker, result.workers
    assert result.state.lost == w1["lost"]  # only the batch in flight
    assert w1["episodes"] > 0  # restarted by Ray, it delivered batches after its death
    info = meta.read_episode_rows(cfg.run_dir / "data", ds.num_episodes)
    assert {info[i]["worker"] for i in rows} == {0, 1}
    assert all(f"fleet-v{info[i]['version']}" == ds.episodes.policy_version[i] for i in rows)
    versions = {str(ds.episodes.policy_version[i]) for i in rows}
    assert "fleet-v0" in versions and len(versions) >= 2  # workers pulled newer versions
    assert result.state.version >= 2 and result.state.updates == 10 * result.state.version
    report = result.report.read_text()
    assert "| 1 |" in report and "deaths" in report
    rows_m = [
        json.loads(x) for x in (result.report.parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows_m and "workers" in rows_m[-1]


@pytest.mark.slow  # ~1 min more: a second tiny fleet, killed and resumed
def test_the_learner_killed_resumes_from_its_checkpoint(cluster, tmp_path):
    cfg = tiny(tmp_path, workers=1, episodes=40)

    def die(version, collector):
        if version == 1:
            raise KeyboardInterrupt("learner killed")

    with pytest.raises(KeyboardInterrupt):
        F.run_fleet(cfg, on_cycle=die)
    saved = json.loads((cfg.run_dir / "fleet" / "state.json").read_text())
    assert saved["version"] == 1
    _, before = fleet_episodes(cfg)
    result = F.run_fleet(dataclasses.replace(cfg, resume=True))
    validate(cfg.run_dir / "data")
    _, rows = fleet_episodes(cfg)
    assert len(rows) == cfg.fleet.episodes and len(before) <= len(rows)
    assert result.state.version > 1  # continued from version 1, not from the start
    assert result.state.starts == 2  # new seeds for any batch of the resumed run
    if len(before) < cfg.fleet.episodes:
        assert result.state.batches > saved["batches"]
    # episodes stored after the last cycle are trained on after the resume
    assert result.state.trained_on == cfg.fleet.episodes


@pytest.mark.slow  # ~40 s more: a third tiny fleet
def test_a_worker_without_parameter_server_keeps_its_version(cluster, tmp_path):
    cfg = tiny(tmp_path, workers=1, episodes=16)

    def lose_server(workers, server):
        ray.kill(server, no_restart=True)

    result = F.run_fleet(cfg, on_started=lose_server)
    validate(cfg.run_dir / "data")
    ds, rows = fleet_episodes(cfg)
    assert len(rows) == 16
    assert {str(ds.episodes.policy_version[i]) for i in rows} == {"fleet-v0"}
    assert result.workers[0]["unreachable"] >= 1  # and it said so


# ---- robots as fleet workers (--deploy robots) -----------------------------------------------


def robot_cfg(tmp_path: Path, **fleet) -> FlywheelConfig:
    from anyskill.flywheel.robots import RobotsConfig

    f = dict(workers=1, envs_per_worker=4, episodes=6, min_new_episodes=2, sim_robots=True)
    f.update(fleet)
    base = tiny(tmp_path)
    return dataclasses.replace(
        base,
        deploy="robots",
        robots=RobotsConfig(port=0),
        fleet=dataclasses.replace(base.fleet, **f, robot_wait_s=60.0),
    )


def test_a_robot_worker_serves_its_robot_and_hands_over_its_episodes(tmp_path):
    """Without Ray: a robot worker serves the starting policy; its (simulated) robot runs
    episodes through the robot-side runtime and uploads them; a batch hands them over with
    the store's features and the version that ran them; a newer version is swapped in for
    the episodes that follow."""
    import jax

    from anyskill import rundir
    from anyskill.flywheel.context import RunContext
    from anyskill.serve.episodes import store_features

    cfg = robot_cfg(tmp_path)
    ctx = RunContext.open(cfg)  # demonstrations and the starting policy, as the driver does
    feats = {k: (list(v.shape), v.dtype) for k, v in store_features(ctx.dataset()).items()}
    files = F.start_files(ctx.paths.start)
    w = F.RobotWorker(rundir.config_to_json(cfg), files, 0, None, 1.0, feats)
    assert w.url().startswith("ws://127.0.0.1:")  # loopback by default
    got = []
    while len(got) < 2:
        r = w.run_batch(len(got), 4)
        assert r["problem"] is None, r["problem"]
        got += [dict(e, batch_version=r["version"]) for e in r["episodes"]]
    for e in got:
        assert set(e["frames"]) == set(feats)
        t = len(e["intervention"])
        assert t > 0 and all(len(v) == t for v in e["frames"].values())
        assert e["version"] == 0 and e["episode_info"]["first_version"] == 0
        assert isinstance(e["success"], bool) and e["task"]
    # a "published" version 1: different weights, swapped in before the next batch waits
    w.params = jax.tree.map(lambda x: x * 0.5, w.params)
    w.version = 1
    later = []
    while not any(e["version"] == 1 for e in later):
        later += w.run_batch(10 + len(later), 4)["episodes"]
    assert w.live.version == 1
    assert all(e["version"] in (0, 1) for e in later)
    new = [e for e in later if e["version"] == 1]
    assert new[-1]["episode_info"]["first_version"] in (0, 1)
    w.srv.stop()


@pytest.mark.slow  # ~1 min: two robot workers with simulated robots on a local Ray
def test_a_fleet_of_robots_feeds_the_learner(cluster, tmp_path):
    cfg = robot_cfg(tmp_path, workers=2, envs_per_worker=2, episodes=6)
    result = F.run_fleet(cfg)
    validate(cfg.run_dir / "data")
    ds, rows = fleet_episodes(cfg)
    assert len(rows) == result.stored == 6
    info = meta.read_episode_rows(cfg.run_dir / "data", ds.num_episodes)
    assert {info[i]["worker"] for i in rows} == {0, 1}
    assert all("first_version" in info[i] and "env_seed" in info[i] for i in rows)
    urls = json.loads((cfg.run_dir / "fleet" / "robots.json").read_text())["urls"]
    assert len(urls) == 2 and all(u.startswith("ws://127.0.0.1:") for u in urls)
    out = json.loads((cfg.run_dir / "fleet" / "result.json").read_text())
    assert sum(v["episodes"] for v in out["by_version"]) == 6
    assert "robot workers (simulated robots)" in result.report.read_text()
