"""Wall time until CRL's success-any on the U-maze's far goals reaches a threshold.

Runs ``anyskill train crl --preset pointmaze-u`` (in-process, the same code path) for several
seeds with an evaluation every ``--epochs`` th of the budget, and reports for each seed the
wall time (from the start of the process's training call, compilation included) and env
steps at the first evaluation with success_any >= threshold, and the final success.

    python benchmarks/time_to_solve.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info

from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import get_preset


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--preset", default="pointmaze-u")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=20, help="evaluations over the run")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        cfg = dataclasses.replace(get_preset(args.preset), seed=seed, num_epochs=args.epochs)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            history = crl_run.train_run(cfg, Path(d) / "run", progress=False, log=lambda *_: None)
            total = time.perf_counter() - t0
        # wall_time in the history counts from the first epoch; add the set-up before it.
        setup = total - history[-1]["wall_time"]
        hit = next((r for r in history if r["success_any"] >= args.threshold), None)
        row = {
            "seed": seed,
            "solved_wall_s": None if hit is None else setup + hit["wall_time"],
            "solved_env_steps": None if hit is None else hit["env_steps"],
            "final_success_any": history[-1]["success_any"],
            "final_time_at_goal": history[-1]["time_at_goal"],
            "min_success_after_solved": None
            if hit is None
            else min(r["success_any"] for r in history if r["epoch"] >= hit["epoch"]),
            "total_wall_s": total,
            "curve": [(r["env_steps"], round(r["success_any"], 3)) for r in history],
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(
        f"| seed | wall time to success_any >= {args.threshold} | env steps then | "
        "final success_any | final time at goal | lowest success after solving | run wall time |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        solved = "not reached" if r["solved_wall_s"] is None else f"{r['solved_wall_s']:.0f} s"
        steps = "-" if r["solved_env_steps"] is None else f"{r['solved_env_steps']:,}"
        low = (
            "-" if r["min_success_after_solved"] is None else f"{r['min_success_after_solved']:.2f}"
        )
        print(
            f"| {r['seed']} | {solved} | {steps} | {r['final_success_any']:.2f} | "
            f"{r['final_time_at_goal']:.1f} | {low} | {r['total_wall_s']:.0f} s |"
        )
    print()
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
