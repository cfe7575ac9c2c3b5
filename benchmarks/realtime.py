"""Learned policies through the policy server and the robot runtime under network latency:
naive chunk switching vs blending vs real-time chunking (issue 25).

    python benchmarks/realtime.py --policy runs/push-vla --task tabletop-push --name push
    python benchmarks/realtime.py --policy runs/reach-vla --task tabletop-reach --name reach
    # a delay-aware model (trained with --model.max-delay 3) beside the guided one:
    python benchmarks/realtime.py --policy runs/push-vla --trained runs/push-vla-d3 ...

The policy is served by ``anyskill serve`` in its own process on loopback. ``--robots``
simulated robots (the built-in task stepped in real time at its control rate) run at once,
each through its own robot-side runtime and link with the faults injected; every condition
runs the same episodes (robot r runs episodes ``fold_in(key(r), i)``), and the policy is also
evaluated in-process (no server, no latency, the policy's execute horizon) on exactly those
episodes. Per condition and mode: success, fallback steps, boundary jerk, the jump where a
new chunk takes over from the old plan, round trips and the runtime's delay estimate.
Results: ``benchmarks/results/realtime-NAME.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_report  # noqa: E402
from serving import serve_process  # noqa: E402

from anyskill.serve.robot import RobotResult, SimRobot  # noqa: E402
from anyskill.serve.runtime import LinkFaults, RuntimeConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: how a new chunk joins the old plan
MODES = {
    "naive": RuntimeConfig(realtime=False, blend_steps=0),
    "blend": RuntimeConfig(realtime=False, blend_steps=3),
    "rtc": RuntimeConfig(realtime=True),
}


def serve(run: str, max_batch: int, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    return serve_process([run, "--max-batch", str(max_batch), *extra])


def run_condition(robot: SimRobot, url: str, args, faults: LinkFaults, runtime: RuntimeConfig):
    """Every robot's episodes at once (one thread per robot); the results merged."""
    per = args.episodes // args.robots

    def one(r: int) -> RobotResult:
        f = LinkFaults(**{**faults.__dict__, "seed": faults.seed + r})
        return robot.run(url, episodes=per, faults=f, runtime=runtime, seed=r)

    with concurrent.futures.ThreadPoolExecutor(args.robots) as pool:
        results = list(pool.map(one, range(args.robots)))
    n = sum(r.episodes for r in results)
    steps = sum(r.steps for r in results)

    def wmean(field, weight):
        vals = [(getattr(r, field), weight(r)) for r in results if np.isfinite(getattr(r, field))]
        return float(sum(v * w for v, w in vals) / max(sum(w for _, w in vals), 1e-9))

    return {
        "episodes": n,
        "success": sum(r.success_rate * r.episodes for r in results) / n,
        "fallback": sum(r.fallback_fraction * r.steps for r in results) / max(steps, 1),
        "late_steps": sum(r.late_steps for r in results) / max(steps, 1),
        "jerk_boundary": wmean("jerk_boundary_mean", lambda r: r.chunks),
        "jerk_interior": wmean("jerk_interior_mean", lambda r: r.steps),
        "switch_gap": wmean("switch_gap_mean", lambda r: r.chunks),
        "latency_p50": float(np.median([r.latency_ms["p50"] for r in results])),
        "latency_p99": float(max(r.latency_ms["p99"] for r in results)),
        "delay_steps": int(np.median([r.delay_steps for r in results])),
        "server_p50": float(np.median([r.server_ms["p50"] for r in results])),
        "realtime": all(r.realtime for r in results),
        "overruns": sum(r.overrun_steps for r in results),
        "stale": sum(r.stale_chunks for r in results),
        "reconnects": sum(r.reconnects for r in results),
        "load": os.getloadavg()[0],
    }


def in_process(run: str, task: str, robots: int, per: int) -> float:
    """Success of the policy evaluated in-process on the robots' episodes."""
    import jax

    from anyskill import envs
    from anyskill.policies.base import ChunkPolicy
    from anyskill.policies.registry import load_policy
    from anyskill.rollout import EpisodeKeys, JaxBatchEnv, rollout

    inner = load_policy(run)

    class OneKey(ChunkPolicy):  # per-episode run keys -> one key per batched call
        spec = inner.spec

        def act(self, obs, key):
            return inner.act(obs, key[0] if key.ndim else key)

    policy = OneKey()
    env = JaxBatchEnv(envs.make(task))
    starts = jax.numpy.concatenate(
        [
            jax.vmap(lambda i, r=r: jax.random.fold_in(jax.random.key(r), i))(np.arange(per))
            for r in range(robots)
        ]
    )
    ep = rollout(env, policy, EpisodeKeys(reset=starts, run=starts), num_envs=len(starts))
    return float(np.mean(ep.success))


#: the simulated-delay variants: (label, loader options, realtime)
SIM_VARIANTS = [
    ("naive", {}, False),
    ("rtc, soft mask (β 5)", {"realtime_mask": "soft"}, True),
    ("rtc, hard mask (β 5, the default)", {"realtime_mask": "hard"}, True),
]


def simulated(args) -> list[dict]:
    """Success against a delay of d steps, in-process (:class:`SimulatedDelay`): the same
    ``--sim-episodes`` episodes for every d and variant, no network, no wall clock."""
    import jax

    from anyskill import envs
    from anyskill.policies.registry import load_policy
    from anyskill.policies.wrappers import SimulatedDelay
    from anyskill.rollout import JaxBatchEnv, rollout

    env = JaxBatchEnv(envs.make(args.task))
    variants = [(label, args.policy, o, rt) for label, o, rt in SIM_VARIANTS]
    if args.trained:
        variants.append(("delay-aware model, committed actions as input", args.trained, {}, True))
        variants.append(("delay-aware model, naive", args.trained, {}, False))
    rows = []
    for label, run, opts, rt in variants:
        inner = load_policy(run, **opts)
        for d in args.sim_delays:
            if d == 0 and rt:
                continue
            w = SimulatedDelay(inner, d, realtime=rt)
            key = jax.random.key(args.sim_seed)
            ep = rollout(env, w, key, num_envs=args.sim_episodes, replan_every=w.period)
            rows.append(
                {
                    "variant": label,
                    "delay": d,
                    "period": w.period,
                    "success": float(np.mean(ep.success)),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(path: Path, table: list[dict], inproc: dict[str, float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for policy in sorted({r["policy"] for r in table}):
        for mode in MODES:
            rows = [
                r
                for r in table
                if r["policy"] == policy and r["mode"] == mode and r["outage_s"] == 0
            ]
            if not rows:
                continue
            lab = f"{mode}" if policy == "guided" else f"{mode} ({policy})"
            xs = [r["latency_ms"] for r in rows]
            ax[0].plot(xs, [r["success"] for r in rows], "o-", label=lab)
            ax[1].plot(xs, [r["switch_gap"] for r in rows], "o-", label=lab)
        if policy in inproc:
            ax[0].axhline(inproc[policy], ls="--", c="gray", lw=1)
    ax[0].set(xlabel="injected latency (ms)", ylabel="success", title=f"{title}: success")
    ax[0].text(0, 0.02, "dashed: in-process evaluation", fontsize=8, c="gray")
    ax[1].set(xlabel="injected latency (ms)", ylabel="jump at switch", title="old plan → new chunk")
    ax[0].set_ylim(0, 1.05)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def network_header(args, inproc: dict[str, float]) -> list[str]:
    return [
        f"Policy `{args.policy}`"
        + (f", delay-aware `{args.trained}`" if args.trained else "")
        + f" served by `anyskill serve` (own process, loopback); {args.robots} simulated "
        f"robots at once, {args.episodes} episodes per row (the same episodes in every row), "
        f"real time at the task's control rate, hold-still fallback. Jitter ± {args.jitter:g} "
        "ms (std) on every non-zero latency; the outage row drops the link for "
        f"{args.outage:g} s every ~4 s. In-process evaluation on the same episodes: "
        + ", ".join(f"{k} {v:.2f}" for k, v in inproc.items())
        + ". Jump = distance between the old plan's and the new chunk's action where the new "
        "chunk takes over; jerk in action units / s².",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True, help="policy run (anyskill train policy)")
    ap.add_argument("--trained", default=None, help="a delay-aware run (--model.max-delay)")
    ap.add_argument("--task", default="tabletop-push")
    ap.add_argument("--name", default=None, help="results name (default: the task)")
    ap.add_argument("--episodes", type=int, default=48)
    ap.add_argument("--robots", type=int, default=16, help="simulated robots at once")
    ap.add_argument("--latencies", type=float, nargs="+", default=[0, 50, 100, 150, 300])
    ap.add_argument("--jitter", type=float, default=10.0, help="ms, std (0 ms row: none)")
    ap.add_argument("--outage", type=float, default=1.0, help="s down every ~4 s (0: no row)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--serve-args", default="", help="extra `anyskill serve` flags (quoted)")
    ap.add_argument("--sim-delays", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--sim-episodes", type=int, default=128, help="0: no simulated rows")
    ap.add_argument("--sim-seed", type=int, default=7)
    ap.add_argument("--no-network", action="store_true", help="only the simulated delays")
    args = ap.parse_args()
    if args.episodes % args.robots:
        raise SystemExit("--episodes must be a multiple of --robots")
    name = args.name or args.task.removeprefix("tabletop-")
    per = args.episodes // args.robots
    sim = simulated(args) if args.sim_episodes else []
    if args.no_network:
        args.latencies, args.outage, args.modes = [], 0.0, []
    inproc = {"guided": in_process(args.policy, args.task, args.robots, per)}
    if args.trained:
        inproc["trained"] = in_process(args.trained, args.task, args.robots, per)
    print("in-process success:", inproc, flush=True)
    robot = SimRobot(args.task)
    table = []
    policies = [("guided", args.policy)] + ([("trained", args.trained)] if args.trained else [])
    conditions = [(lat, 0.0) for lat in args.latencies]
    if args.outage:
        conditions.append((100.0, args.outage))
    for pname, run in policies if conditions else []:
        proc, port = serve(run, max_batch=args.robots, extra=args.serve_args.split())
        try:
            for lat, outage in conditions:
                faults = LinkFaults(
                    latency_ms=lat,
                    jitter_ms=args.jitter if lat else 0.0,
                    disconnect_every_s=4.0 if outage else 0.0,
                    disconnect_for_s=outage or 1.0,
                )
                modes = args.modes if pname == "guided" else ["rtc"]
                for mode in modes:
                    t0 = time.perf_counter()
                    r = run_condition(robot, f"ws://127.0.0.1:{port}", args, faults, MODES[mode])
                    r.update(
                        policy=pname, mode=mode, latency_ms=lat, outage_s=outage,
                        wall_s=time.perf_counter() - t0,
                    )  # fmt: skip
                    table.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    out = RESULTS / f"realtime-{name}"
    out.with_suffix(".json").write_text(
        json.dumps({"in_process": inproc, "rows": table, "simulated": sim}, indent=1)
    )
    if table:
        plot(out.with_suffix(".png"), table, inproc, name)
    lines = [
        f"# Real-time execution of a learned {name} policy under latency",
        "",
    ]
    if not table:
        lines += [f"Policy `{args.policy}`; simulated delay only (`--no-network`)."]
    else:
        lines += network_header(args, inproc)
    lines += (
        []
        if not table
        else [
            "| policy | mode | latency ms | outage | success | fallback steps | late steps | jump at "
            "switch | jerk at boundaries / elsewhere | round trip p50 / p99 ms | server ms p50 | "
            "delay est. (steps) | load |",
            "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
    )
    for r in table:
        lines.append(
            f"| {r['policy']} | {r['mode']} | {r['latency_ms']:g} | {r['outage_s']:g} s | "
            f"{r['success']:.2f} | {r['fallback']:.1%} | {r['late_steps']:.1%} | "
            f"{r['switch_gap']:.3f} | {r['jerk_boundary']:.2f} / {r['jerk_interior']:.2f} | "
            f"{r['latency_p50']:.0f} / {r['latency_p99']:.0f} | {r['server_p50']:.0f} | "
            f"{r['delay_steps']} | "
            f"{r['load']:.1f} |"
        )
    if table:
        lines += ["", f"![success against latency]({out.with_suffix('.png').name})"]
    if sim:
        delays = sorted({r["delay"] for r in sim})
        lines += [
            "",
            f"Simulated delay (in-process, `SimulatedDelay`; {args.sim_episodes} episodes, the "
            "same for every cell): success when each chunk is usable d control steps after "
            "its observation (d = round trip / control period, rounded up; at 10 Hz d = 1 "
            "up to 100 ms, 2 up to 200 ms, 3 up to 300 ms).",
            "",
            "| variant | " + " | ".join(f"d = {d}" for d in delays) + " |",
            "|:--|" + "--:|" * len(delays),
        ]
        for v in dict.fromkeys(r["variant"] for r in sim):
            cells = {r["delay"]: r["success"] for r in sim if r["variant"] == v}
            lines.append(
                f"| {v} | "
                + " | ".join(f"{cells[d]:.2f}" if d in cells else "–" for d in delays)
                + " |"
            )
    write_report(out.with_suffix(".md"), lines)


if __name__ == "__main__":
    main()
