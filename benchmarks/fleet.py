"""The flywheel on Ray (issue 26): collection throughput with 1, 2, 4 workers against the
same worker run in-process, a simulated two-node cluster, the learner's updates/s alone and
while collection runs, fault trials (random worker kills), and a paper estimate of a
100-robot fleet. Results to ``benchmarks/results/fleet.md``.

    python benchmarks/fleet.py                      # everything (~15 min on 2 cores)
    python benchmarks/fleet.py --only throughput    # or: multinode, learner, faults

The run directory (demonstrations and the starting policy, the flywheel's default VLA on
tabletop-reach) is made once in ``--root`` and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # before Ray is imported

import numpy as np
from common import machine_info, write_report

from anyskill import rundir
from anyskill.flywheel import fleet as F
from anyskill.flywheel.artifacts import RunPaths
from anyskill.flywheel.config import FleetConfig, FlywheelConfig

ENVS = 64  # episodes per worker batch (a batch of vectorised envs)


def base_config(root: Path) -> FlywheelConfig:
    return FlywheelConfig(
        env="tabletop-reach",
        run_dir=root / "run",
        demos=60,
        init_steps=300,
        policy_steps=200,
        awr_beta=0.05,
        deploy_with="awr",
        videos=False,
        progress=False,
        eval_episodes=64,
    )


def setup(root: Path) -> FlywheelConfig:
    """Demonstrations and the starting policy (once)."""
    from anyskill.flywheel.context import RunContext

    cfg = base_config(root)
    paths = RunPaths(cfg.run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    rundir.write_json(paths.config, rundir.config_to_json(cfg))
    RunContext.open(cfg)
    return cfg


def worker_args(cfg: FlywheelConfig):
    return rundir.config_to_json(cfg), F.start_files(RunPaths(cfg.run_dir).start)


# ---- collection -------------------------------------------------------------------------------


def in_process(cfg: FlywheelConfig, batches: int) -> dict:
    """The deploy worker's own code without Ray, in a process with the worker's threads."""
    code = (
        "import json,sys,time;sys.path.insert(0,'benchmarks');import fleet as B;"
        "from pathlib import Path;"
        f"cfg=B.base_config(Path({str(cfg.run_dir.parent)!r}));"
        f"print('RESULT',json.dumps(B._in_process(cfg,{batches})))"
    )
    env = {**os.environ, **F.worker_env(1)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT ") :])


def _in_process(cfg: FlywheelConfig, batches: int) -> dict:
    cfg_json, files = worker_args(cfg)
    w = F.DeployWorker(cfg_json, files, 0, None, 1.0)
    t0 = time.perf_counter()
    w.run_batch(0, ENVS)  # compiles
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    eps = steps = 0
    for b in range(batches):
        r = w.run_batch(1 + b, ENVS)
        eps += len(r["episodes"])
        steps += r["steps"]
    wall = time.perf_counter() - t0
    return {"episodes_per_s": eps / wall, "steps_per_s": steps / wall, "compile_s": compile_s}


def on_ray(ray, cfg: FlywheelConfig, workers: int, batches: int, opts: dict | None = None) -> dict:
    """``workers`` deploy workers, each warmed up, then ``batches`` batches each with one
    always queued; episodes/s over the whole window, bytes per episode of the results."""
    cfg_json, files = worker_args(cfg)
    files = ray.put(files)
    server = ray.remote(F.ParameterServer).options(num_cpus=0).remote()
    o = dict(num_cpus=1, runtime_env={"env_vars": F.worker_env(1)}, **(opts or {}))
    Worker = ray.remote(F.DeployWorker)
    ws = [Worker.options(**o).remote(cfg_json, files, i, server, 5.0) for i in range(workers)]
    ray.get(ws[0].run_batch.remote(0, ENVS))  # compiles into the persistent cache
    ray.get([w.run_batch.remote(1, ENVS) for w in ws[1:]])
    nodes = {ray.get(w.run_batch.remote(2, ENVS))["pid"] for w in ws}
    t0 = time.perf_counter()
    refs = [w.run_batch.remote(10 + b, ENVS) for b in range(batches) for w in ws]
    results = ray.get(refs)
    wall = time.perf_counter() - t0
    eps = sum(len(r["episodes"]) for r in results)
    steps = sum(r["steps"] for r in results)
    size = np.mean([len(pickle.dumps(r["episodes"])) / len(r["episodes"]) for r in results])
    for w in ws:
        ray.kill(w)
    ray.kill(server)
    return {
        "workers": workers,
        "episodes_per_s": eps / wall,
        "steps_per_s": steps / wall,
        "bytes_per_episode": float(size),
        "processes": len(nodes),
    }


def throughput(cfg, out: dict) -> None:
    import ray

    base = in_process(cfg, 16)
    print("in-process", base, flush=True)
    out["in_process"] = base
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    rows = []
    for w in (1, 2, 4):
        r = on_ray(ray, cfg, w, 16 // w)  # the same episodes in all
        print(r, flush=True)
        rows.append(r)
    ray.shutdown()
    out["ray"] = rows


def overhead(cfg, out: dict, repeats: int = 3) -> None:
    """Ray's overhead at one worker, measured ``repeats`` times alternating with the
    in-process run (single measurements of either varied by ±15 % here)."""
    import ray

    pairs = []
    for _ in range(repeats):
        base = in_process(cfg, 16)["episodes_per_s"]
        ray.init(
            num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
        )
        on = on_ray(ray, cfg, 1, 16)["episodes_per_s"]
        ray.shutdown()
        pairs.append((base, on))
        print("overhead pair", pairs[-1], flush=True)
    ratio = [b / a for a, b in pairs]
    out["overhead"] = {
        "pairs_episodes_per_s": pairs,
        "ray_over_in_process": ratio,
        "mean_ratio": float(np.mean(ratio)),
    }


def multinode(cfg, out: dict) -> None:
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    # one worker per node: each needs the node's one CPU
    r = on_ray(ray, cfg, 2, 8)
    r["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
    print("multinode", r, flush=True)
    ray.shutdown()
    c.shutdown()
    out["multinode"] = r


# ---- learner ------------------------------------------------------------------------------


def learner(cfg, out: dict, steps: int = 200) -> None:
    """Policy updates/s of the learner (AWR fine-tuning on the store) alone, then while one
    Ray worker (1 thread, 1 CPU) collects continuously."""
    import ray

    from anyskill.algos.recap.value import ValueConfig
    from anyskill.flywheel import phases
    from anyskill.flywheel.context import RunContext

    # the value function only labels the frames here: a short fit is enough
    ctx = RunContext.open(dataclasses.replace(cfg, value=ValueConfig(steps=100)))
    ds = ctx.dataset()
    data = ctx.training_data(0)
    vp, _ = phases.train_value(ctx, ds, data, None, 1)
    labels = phases.advantages_of(ctx, ds, data, vp)

    def rate() -> float:
        t0 = time.perf_counter()
        phases.finetune(ctx, "awr", ctx.start_params, labels, steps, 1)
        return steps / (time.perf_counter() - t0)

    rate()  # compiles
    alone = [rate() for _ in range(2)]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    cfg_json, files = worker_args(cfg)
    Worker = ray.remote(F.DeployWorker)
    w = Worker.options(num_cpus=1, runtime_env={"env_vars": F.worker_env(1)}).remote(
        cfg_json, ray.put(files), 0, None, 1.0
    )
    ray.get(w.run_batch.remote(0, ENVS))  # compiled before the window
    stop, done = threading.Event(), []

    def collect():
        b = 1
        pending = [w.run_batch.remote(b, ENVS)]
        while not stop.is_set():
            b += 1
            pending.append(w.run_batch.remote(b, ENVS))
            done.append(ray.get(pending.pop(0)))

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    time.sleep(2)
    t0 = time.perf_counter()
    n0 = len(done)
    busy = [rate() for _ in range(2)]
    window = time.perf_counter() - t0
    eps = (len(done) - n0) * ENVS
    stop.set()
    t.join()
    ray.shutdown()
    out["learner"] = {
        "steps": steps,
        "alone_updates_per_s": float(np.mean(alone)),
        "with_collection_updates_per_s": float(np.mean(busy)),
        "ratio": float(np.mean(busy) / np.mean(alone)),
        "collection_episodes_per_s_meanwhile": eps / window,
        "frames": int(ds.num_frames),
    }
    print("learner", out["learner"], flush=True)


# ---- faults -------------------------------------------------------------------------------


def faults(root: Path, out: dict, kills: int = 20) -> None:
    """A fleet run (tiny MLP flow policy, 2 workers x 8 envs) while a killer kills a random
    worker that is running a batch every 2-6 s, ``kills`` times; then the store is validated
    and every stored batch must be whole (all its episodes, or none)."""
    import shutil

    from anyskill.algos.recap.value import ValueConfig
    from anyskill.algos.vla.config import ModelConfig
    from anyskill.data import meta
    from anyskill.data.reader import Dataset
    from anyskill.data.validate import validate
    from anyskill.flywheel.deploy import CorrectorConfig

    run = root / "faults"
    shutil.rmtree(run, ignore_errors=True)
    envs = 8
    cfg = FlywheelConfig(
        env="tabletop-reach",
        run_dir=run,
        demos=24,
        init_steps=60,
        batch_size=32,
        model=ModelConfig(arch="mlp-flow", mlp_width=64, depth=2, width=32, horizon=5),
        value=ValueConfig(steps=30, finetune_steps=10, batch_size=32, hidden=32),
        corrector=CorrectorConfig(fraction=1.0, stall_window=10),
        eval_episodes=16,
        videos=False,
        progress=False,
        awr_beta=0.05,
        deploy_with="awr",
        cluster="local",
        fleet=FleetConfig(
            workers=2,
            envs_per_worker=envs,
            episodes=100_000,  # ended by the killer after `kills` kills
            publish_every=20,
            min_new_episodes=32,
            status_every_s=20,
            local_cpus=2,
        ),
    )
    log = {"kills": 0, "skipped": 0}
    stop = threading.Event()

    def killer(collector):
        import ray

        rng = random.Random(0)
        while not stop.is_set() and log["kills"] < kills:
            time.sleep(rng.uniform(2, 6))
            i = rng.randrange(len(collector.workers))
            if not collector.alive[i] or not collector.stats[i].batches:
                log["skipped"] += 1  # restarting or not started: nothing running to kill
                continue
            ray.kill(collector.workers[i], no_restart=False)
            log["kills"] += 1
        collector.need = collector.stored  # enough: end the run
        stop.set()

    def on_cycle(version, collector):
        if version == 1:
            threading.Thread(target=killer, args=(collector,), daemon=True).start()

    t0 = time.perf_counter()
    result = F.run_fleet(cfg, on_cycle=on_cycle)
    wall = time.perf_counter() - t0
    validate(run / "data")
    ds = Dataset.open(run / "data")
    rows = meta.read_episode_rows(run / "data", ds.num_episodes)
    per_batch: dict = {}
    for r in rows:
        if "batch" in r and r["batch"] is not None and not np.isnan(r["batch"]):
            per_batch[int(r["batch"])] = per_batch.get(int(r["batch"]), 0) + 1
    partial = {b: n for b, n in per_batch.items() if n != envs}
    deaths = sum(w["deaths"] for w in result.workers)
    out["faults"] = {
        "kills": log["kills"],
        "skipped_kills": log["skipped"],
        "deaths_seen": deaths,
        "episodes_lost": result.state.lost,
        "lost_if_only_in_flight": log["kills"] * envs,
        "requeued_batches": sum(w["requeued"] for w in result.workers),
        "stored": result.stored,
        "partial_batches": partial,
        "versions": result.state.version,
        "wall_s": wall,
    }
    print("faults", out["faults"], flush=True)


# ---- report -----------------------------------------------------------------------------------


def estimate(out: dict) -> list[str]:
    """A 100-robot fleet and an 8-GPU learner, from the measured costs (stated assumptions)."""
    ray_rows = out.get("ray") or []
    one = next((r for r in ray_rows if r["workers"] == 1), None)
    ln = out.get("learner")
    if one is None or ln is None:
        return []
    hz = 10.0  # the tabletop's control rate
    bytes_ep = one["bytes_per_episode"]
    steps_per_ep = one["steps_per_s"] / one["episodes_per_s"]
    robot_ep_s = steps_per_ep / hz + 10.0  # real time + 10 s reset per episode (assumed)
    eps_h = 100 * 3600 / robot_ep_s
    frames_h = eps_h * steps_per_ep
    cpu_ups = ln["alone_updates_per_s"]
    gpu_ups = cpu_ups * 50 * 8  # assumed: one GPU = 50x this 2-core CPU, 8 GPUs data-parallel
    batch = 64
    return [
        "Paper estimate (assumptions in italics): 100 robots at the tabletop's 10 Hz, "
        f"episodes of the measured mean length ({steps_per_ep:.0f} steps) *plus a 10 s reset*: "
        f"**{eps_h:,.0f} episodes/h**, {frames_h:,.0f} frames/h. Network: "
        f"{bytes_ep / 1e3:.1f} kB per episode up (measured pickled size, state/goal/action/"
        f"interventions; camera frames would add 64×64×3 B = 12 kB per frame raw) = "
        f"{eps_h * bytes_ep / 3600 / 1e3:.0f} kB/s in all; weights down "
        f"(published every --fleet.publish-every updates) once per version per robot.",
        f"Learner: measured {cpu_ups:.1f} updates/s (batch {batch}) on this CPU; *an 8-GPU "
        f"learner at 50× per GPU* ≈ {gpu_ups:,.0f} updates/s ≈ {gpu_ups * batch * 3600:,.0f} "
        f"samples/h, {gpu_ups * batch * 3600 / max(frames_h, 1):,.0f}× the frames the fleet "
        f"brings per hour: the learner is not the bottleneck; it would revisit each frame "
        f"that many times per hour (utilisation limited by data, not compute).",
    ]


def report(out: dict, path: Path) -> None:
    lines = ["# Flywheel on Ray (issue 26)", "", *machine_info(), ""]
    if "in_process" in out:
        b = out["in_process"]
        lines += [
            "| set-up | workers | episodes/s | env steps/s | vs in-process | kB/episode |",
            "|---|---|---|---|---|---|",
            f"| in-process (no Ray) | 1 | {b['episodes_per_s']:.2f} | {b['steps_per_s']:.0f} "
            "| 1.00 | |",
        ]
        for r in out.get("ray", []):
            lines.append(
                f"| Ray, 1 node | {r['workers']} | {r['episodes_per_s']:.2f} | "
                f"{r['steps_per_s']:.0f} | {r['episodes_per_s'] / b['episodes_per_s']:.2f} | "
                f"{r['bytes_per_episode'] / 1e3:.1f} |"
            )
        if "multinode" in out:
            r = out["multinode"]
            lines.append(
                f"| Ray, {r['nodes']} simulated nodes | 2 | {r['episodes_per_s']:.2f} | "
                f"{r['steps_per_s']:.0f} | {r['episodes_per_s'] / b['episodes_per_s']:.2f} | "
                f"{r['bytes_per_episode'] / 1e3:.1f} |"
            )
    if "overhead" in out:
        o = out["overhead"]
        lines += [
            "",
            "Ray at one worker ÷ in-process, "
            f"{len(o['ray_over_in_process'])} alternating pairs of 16 batches: "
            + " / ".join(f"{r:.2f}" for r in o["ray_over_in_process"])
            + f" (mean {o['mean_ratio']:.2f}, i.e. {100 * (1 - o['mean_ratio']):.0f} % overhead).",
        ]
    if "learner" in out:
        ln = out["learner"]
        lines += [
            "",
            f"Learner (AWR, {ln['steps']} updates per measurement, {ln['frames']} frames): "
            f"{ln['alone_updates_per_s']:.2f} updates/s alone, "
            f"{ln['with_collection_updates_per_s']:.2f} while one worker collects "
            f"({ln['collection_episodes_per_s_meanwhile']:.2f} episodes/s): "
            f"**{100 * ln['ratio']:.0f} %**.",
        ]
    if "faults" in out:
        f = out["faults"]
        lines += ["", "Fault trial: " + json.dumps(f)]
    lines += ["", *estimate(out), "", "```", json.dumps(out, indent=1), "```"]
    write_report(path, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("runs/bench-fleet"))
    ap.add_argument("--only", choices=["throughput", "overhead", "multinode", "learner", "faults"])
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    res = Path(__file__).parent / "results"
    saved = res / "fleet.json"
    out = json.loads(saved.read_text()) if saved.exists() and args.only else {}
    cfg = setup(args.root)
    todo = (
        [args.only] if args.only else ["throughput", "overhead", "multinode", "learner", "faults"]
    )
    for name in todo:
        if name == "faults":
            faults(args.root, out, args.kills)
        else:
            globals()[name](cfg, out)
        saved.write_text(json.dumps(out, indent=1))
    report(out, res / "fleet.md")
    print((res / "fleet.md").read_text())


if __name__ == "__main__":
    main()
