"""Deep teacher -> shallow student (issue 28): success and inference cost of each.

For every seed: train a deep CRL teacher on the U-maze (``--preset pointmaze-u --depth D``;
skipped when its run directory already holds a finished run), distil it into a shallower,
narrower student (``anyskill distill crl``; skipped when the student's run exists), then

- success of teacher and student on the same far-goal episodes (``anyskill eval``'s seed:
  the same starts and goals for both);
- multiply-adds per action of each actor (counted from widths and depths,
  ``distill.actor_macs``) and measured wall time of one jitted deterministic action batch
  (B = 1 and B = 256, median of repeated calls);
- held-out distance error (RMSE, MAE) and Spearman rank correlation of the student's vs the
  teacher's critic distance on pairs from trajectories the student never trained on.

    python benchmarks/distill.py --seeds 0 1 2 --root /tmp/dist/runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from common import write_report

from anyskill import checkpoint
from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import get_preset
from anyskill.algos.crl.distill import DISTILL_FILE, DistillConfig, StudentConfig, distill_run


def action_time_ms(run_dir: Path, batch: int, repeats: int) -> float:
    """Median wall time of one jitted deterministic action for ``batch`` (state, goal) rows."""
    trainer, state, _ = crl_run.load_trained(run_dir)
    env = trainer.eval_env
    act = jax.jit(lambda p, o, g: trainer.act(p, None, o, g, deterministic=True))
    rng = np.random.default_rng(0)
    obs = jax.device_put(rng.normal(size=(batch, env.obs_dim)).astype(np.float32))
    goal = jax.device_put(rng.normal(size=(batch, env.goal_dim)).astype(np.float32))
    params = jax.device_put(state.params)
    act(params, obs, goal).block_until_ready()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        act(params, obs, goal).block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=Path("runs/distill"), help="run directories")
    ap.add_argument("--teacher-depth", type=int, default=8, help="critic and actor depth")
    ap.add_argument("--env-steps", type=int, default=500_000, help="teacher's training budget")
    ap.add_argument("--student-depth", type=int, default=4, help="critic and actor depth")
    ap.add_argument("--student-width", type=int, default=32, help="critic and actor width")
    ap.add_argument("--distill-steps", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=256, help="evaluation episodes (same goals)")
    ap.add_argument("--repeats", type=int, default=200, help="timed action calls per batch size")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "distill")
    args = ap.parse_args(argv)

    rows = []
    for seed in args.seeds:
        t_dir = args.root / f"teacher-d{args.teacher_depth}-s{seed}"
        s_dir = args.root / (
            f"student-d{args.student_depth}w{args.student_width}-of-d{args.teacher_depth}-s{seed}"
        )
        if (t_dir / crl_run.CHECKPOINT_FILE).is_file():
            epoch = checkpoint.load_meta(t_dir / crl_run.CHECKPOINT_FILE)["epoch"]
            if epoch + 1 < crl_run.load_config(t_dir).num_epochs:
                sys.exit(f"{t_dir} has trained {epoch + 1} epochs, not all: finish it first")
        else:
            cfg = dataclasses.replace(
                get_preset("pointmaze-u"),
                seed=seed,
                total_env_steps=args.env_steps,
                critic_depth=args.teacher_depth,
                actor_depth=args.teacher_depth,
            )
            crl_run.train_run(cfg, t_dir, progress=False)
        if not (s_dir / DISTILL_FILE).is_file():
            config = DistillConfig(
                student=StudentConfig(
                    critic_depth=args.student_depth,
                    actor_depth=args.student_depth,
                    critic_width=args.student_width,
                    actor_width=args.student_width,
                ),
                steps=args.distill_steps,
                seed=seed,
                eval_episodes=0,
            )
            distill_run(t_dir, s_dir, config, progress=False)
        summary = json.loads((s_dir / DISTILL_FILE).read_text())
        row = {
            "seed": seed,
            "teacher": str(t_dir),
            "student": str(s_dir),
            "teacher_nets": summary["teacher_nets"],
            "student_nets": summary["student_nets"],
            "teacher_macs": summary["teacher_actor_macs"],
            "student_macs": summary["student_actor_macs"],
            "macs_ratio": summary["macs_ratio"],
            "distill_time_s": summary["train_time_s"],
            "heldout_before": summary["heldout_before"],
            "heldout_after": summary["heldout_after"],
            "load": os.getloadavg()[0],
        }
        for name, d in (("teacher", t_dir), ("student", s_dir)):
            r = crl_run.eval_run(d, num_episodes=args.episodes)  # same seed: same goals
            row[f"{name}_success_any"] = r["success_any"]
            row[f"{name}_time_at_goal"] = r["time_at_goal"]
            for b in (1, 256):
                row[f"{name}_ms_b{b}"] = action_time_ms(d, b, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)

    lines = [
        "# Deep teacher -> shallow student (issue 28)",
        "",
        f"`python benchmarks/distill.py {' '.join(sys.argv[1:])}`",
        "",
        f"Teacher: `--preset pointmaze-u --depth {args.teacher_depth}` ({args.env_steps} env "
        f"steps); student: depth {args.student_depth}, width {args.student_width}, "
        f"{args.distill_steps} distillation steps. {args.episodes} far-goal episodes "
        "(pointmaze-u-eval), the same for teacher and student.",
        "",
        "| seed | teacher success | student success | Δ (points) | teacher MACs/action | "
        "student MACs/action | ratio | ms/batch of 1 (T / S) | ms/batch of 256 (T / S) | "
        "held-out dist RMSE before → after (teacher std) | Spearman all / per state | "
        "action MSE before → after |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["heldout_before"], r["heldout_after"]
        lines.append(
            f"| {r['seed']} | {r['teacher_success_any']:.2f} | {r['student_success_any']:.2f} | "
            f"{100 * (r['student_success_any'] - r['teacher_success_any']):+.1f} | "
            f"{r['teacher_macs']:,} | {r['student_macs']:,} | {r['macs_ratio']:.1f}x | "
            f"{r['teacher_ms_b1']:.3f} / {r['student_ms_b1']:.3f} | "
            f"{r['teacher_ms_b256']:.3f} / {r['student_ms_b256']:.3f} | "
            f"{b['distance_rmse']:.2f} → {a['distance_rmse']:.2f} ({a['teacher_distance_std']:.2f}) | "
            f"{a['spearman']:.3f} / {a['spearman_per_state']:.3f} | "
            f"{b['action_mse']:.3f} → {a['action_mse']:.4f} |"
        )
    if rows:
        t = np.array([r["teacher_success_any"] for r in rows])
        s = np.array([r["student_success_any"] for r in rows])
        lines += [
            "",
            f"Mean teacher {t.mean():.3f} ± {t.std():.3f}, student {s.mean():.3f} ± {s.std():.3f}"
            f" (± = std over {len(rows)} seeds).",
        ]
    write_report(args.out.with_suffix(".md"), lines)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
