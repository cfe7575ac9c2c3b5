"""Task success and smoothness of chunked execution against a policy server under injected
latency, jitter and disconnects (tabletop-reach, real time, loopback).

    python benchmarks/serve_latency_success.py                      # ~4 min
    python benchmarks/serve_latency_success.py --policy CKPT --task tabletop-push --episodes 50

The server runs as its own process (``anyskill serve``); the simulated robot runs here, in
real time at the task's control rate, through the robot-side runtime, with the faults
injected on its link. Jerk is the second difference of the executed velocity commands times
control_hz^2 (action units / s^2), on the two steps straddling each chunk switch ("boundary")
and on all other steps ("interior"). Results go to benchmarks/results/serve_latency_success.md.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_report  # noqa: E402

from anyskill.serve.robot import SimRobot  # noqa: E402
from anyskill.serve.runtime import LinkFaults, RuntimeConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve_latency_success.md"

LONG_DROPS = LinkFaults(latency_ms=50, jitter_ms=10, disconnect_every_s=1.5, disconnect_for_s=3.0)

#: (label, faults, runtime overrides[, fallback: overrides --fallback])
CONDITIONS = [
    ("0 ms", LinkFaults(), {}),
    ("50 ms +- 10", LinkFaults(latency_ms=50, jitter_ms=10), {}),
    ("200 ms +- 20", LinkFaults(latency_ms=200, jitter_ms=20), {}),
    (
        "50 ms, drop every ~1.5 s for 1 s",
        LinkFaults(latency_ms=50, jitter_ms=10, disconnect_every_s=1.5, disconnect_for_s=1.0),
        {},
    ),
    ("50 ms, drop every ~1.5 s for 3 s", LONG_DROPS, {}),
    ("50 ms, drop every ~1.5 s for 3 s, expert fallback", LONG_DROPS, {}, "expert"),
    ("ablation: 50 ms, no blending", LinkFaults(latency_ms=50, jitter_ms=10), {"blend_steps": 0}),
    ("ablation: 200 ms, no early request", LinkFaults(latency_ms=200, jitter_ms=20), {"lead": 0}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="expert:tabletop-reach", help="built-in or checkpoint")
    ap.add_argument("--task", default="tabletop-reach")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--fallback", default="hold", choices=["hold", "expert"])
    ap.add_argument("--only", default="", help="run only conditions whose label has this")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    conditions = [c for c in CONDITIONS if args.only in c[0]]

    cmd = [sys.executable, "-m", "anyskill.cli", "serve", "--port", "0"]
    cmd += [args.policy] if Path(args.policy).exists() else ["--policy", args.policy]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r":(\d+) ", line).group(1))
    robot = SimRobot(args.task)
    rows = []
    try:
        for label, faults, overrides, *fallback in conditions:
            r = robot.run(
                f"ws://127.0.0.1:{port}",
                episodes=args.episodes,
                faults=faults,
                runtime=RuntimeConfig(**overrides),
                fallback=fallback[0] if fallback else args.fallback,
            )
            load = os.getloadavg()[0]
            rows.append((label, r, load))
            print(
                f"{label:52s} success {r.success_rate:.2f} fallback {r.fallback_fraction:.3f} "
                f"jerk boundary {r.jerk_boundary_mean:6.2f} interior {r.jerk_interior_mean:6.2f} "
                f"latency p50 {r.latency_ms['p50']:6.1f} p99 {r.latency_ms['p99']:6.1f} "
                f"reconnects {r.reconnects} overruns {r.overrun_steps} load {load:.2f}",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    lines = [
        "# Chunked execution under latency and disconnects",
        "",
        f"Task `{args.task}`, policy `{args.policy}` served by `anyskill serve` (own process, "
        f"loopback); {args.episodes} episodes per row run in real time at the task's control "
        f"rate; fallback `{args.fallback}` unless the row says otherwise; runtime defaults: execute the whole chunk, "
        "request the next one when (estimated delay - 1) actions remain, blend over 3 steps. Latency = request "
        "to usable reply, including the injected delay. Jerk in action units / s^2.",
        "",
        "| condition | success | fallback steps | jerk at boundaries (mean / p95) | jerk "
        "elsewhere (mean) | latency p50 / p99 ms | chunks | stale | deadline misses | "
        "reconnects | overruns | load |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, r, load in rows:
        lines.append(
            f"| {label} | {r.success_rate:.2f} | {r.fallback_fraction:.1%} | "
            f"{r.jerk_boundary_mean:.2f} / {r.jerk_boundary_p95:.2f} | "
            f"{r.jerk_interior_mean:.2f} | {r.latency_ms['p50']:.1f} / {r.latency_ms['p99']:.1f}"
            f" | {r.chunks} | {r.stale_chunks} | {r.deadline_misses} | {r.reconnects} | "
            f"{r.overrun_steps} | {load:.2f} |"
        )
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
