"""Depth study: time-at-goal at equal env steps for critic depths on the harder mazes.

For every (maze, depth) all seeds train at once, ``jax.vmap`` over the pure ``trainer.train``
(the whole run is one jitted function). Every run gets the same env-step budget and the same
update-to-data ratio; only the critic's depth changes (the actor keeps depth 4 unless
--actor-depth says otherwise). Evaluation uses the maze's far-goal variant.
Results are appended to a JSON file as each setting finishes (a killed study keeps them).

    python benchmarks/depth_study.py --mazes big hardest --depths 4 8 16 32 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from common import machine_info

from anyskill.algos.crl.config import CRLConfig
from anyskill.algos.crl.train import make_train


def study_config(maze: str, depth: int, steps: int, width: int, actor_depth: int) -> CRLConfig:
    return CRLConfig(
        env=f"pointmaze-{maze}",
        total_env_steps=steps,
        num_envs=128,
        unroll_length=10,
        updates_per_unroll=32,
        batch_size=256,
        replay_capacity=1000,
        min_replay_steps=200,
        num_epochs=8,
        critic_width=width,
        actor_width=width,
        critic_depth=depth,
        actor_depth=actor_depth,
        num_eval_envs=128,
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mazes", nargs="+", default=["big", "hardest"])
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--env-steps", type=int, default=300_000)
    p.add_argument(
        "--actor-depth",
        type=int,
        default=4,
        help="actor depth, fixed while the critic depth varies (-1: same as critic)",
    )
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/depth_study.json"))
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["maze"], r["depth"]) for r in results}
    for maze in args.mazes:
        for depth in args.depths:
            if (maze, depth) in done:
                continue
            actor_depth = depth if args.actor_depth < 0 else args.actor_depth
            cfg = study_config(maze, depth, args.env_steps, args.width, actor_depth)
            trainer = make_train(cfg)
            keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
            t0 = time.perf_counter()
            _, metrics = jax.block_until_ready(jax.jit(jax.vmap(trainer.train))(keys))
            wall = time.perf_counter() - t0
            m = jax.tree.map(np.asarray, metrics)  # [seeds, epochs]
            row = {
                "maze": maze,
                "depth": depth,
                "actor_depth": actor_depth,
                "width": args.width,
                "seeds": args.seeds,
                "env_steps": cfg.prefill_steps + cfg.num_epochs * cfg.env_steps_per_epoch,
                "grad_steps": cfg.num_epochs * cfg.iterations_per_epoch * cfg.updates_per_unroll,
                "time_at_goal": m["time_at_goal"][:, -1].tolist(),
                "success_any": m["success_any"][:, -1].tolist(),
                "time_at_goal_curve": m["time_at_goal"].mean(0).round(2).tolist(),
                "wall_s": wall,
            }
            results.append(row)
            args.out.write_text(json.dumps(results, indent=1))
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        "| maze | depth | env steps | time at goal (mean ± std over seeds; episode length) "
        "| success_any (mean) | wall (all seeds) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        t = np.array(r["time_at_goal"])
        print(
            f"| {r['maze']} | {r['depth']} | {r['env_steps']:,} | {t.mean():.1f} ± {t.std():.1f} "
            f"| {np.mean(r['success_any']):.2f} | {r['wall_s']:.0f} s |"
        )
    print()
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
