"""Search before acting (issue 28): CRL's actor with and without the planner, same runs.

For every (maze, seed): train a CRL run (unless its run directory already holds one), then
evaluate on the maze's far-goal variant, with the same starts and goals (one eval seed):

- flat: the actor asked for the goal (``CRLPolicy``);
- plan: the actor following waypoints over a graph of its replay buffer weighted by its
  critic (``WaypointPlanner`` + ``CRLDistance``);
- oracle (``--oracle``): the same planner over the maze's true geodesic distances — is a
  miss the critic's distance or the actor's short-range control?

and measures the planner's cost (graph build; one decision for one state, B = 1) and a
diagnostic of the critic's distance against the true geodesic distance on node pairs:
Spearman rank correlation (all pairs, and pairs within 2 cells), and the fraction of kept
edges (learned <= cutoff) whose true geodesic length is more than 2 cells ("wormholes").

    python benchmarks/planning.py --mazes hardest u --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import write_report

from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import CRLConfig, get_preset
from anyskill.algos.crl.planner import build_planner, evaluate
from anyskill.algos.crl.policy import CRLPolicy
from anyskill.envs.maze_geodesic import MazeGeodesic
from anyskill.policies.planning import PlannerConfig, WaypointGraph, WaypointPlanner


def train_config(maze: str, seed: int, steps: int) -> CRLConfig:
    """The maze's preset (``anyskill train crl --preset pointmaze-MAZE``: width 64, depth 4,
    64 envs, 20 env steps per gradient step) with a smaller env-step budget."""
    preset = get_preset(f"pointmaze-{maze}")
    return dataclasses.replace(preset, seed=seed, total_env_steps=steps, num_epochs=10)


def decision_ms(planner: WaypointPlanner, states: np.ndarray, goals: np.ndarray) -> float:
    """Median wall time of one replan for one state (B = 1), after a warm-up."""
    planner.plan(states[:1], goals[:1])
    times = []
    for i in range(len(states)):
        t0 = time.perf_counter()
        planner.plan(states[i : i + 1], goals[i : i + 1])
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def distance_diagnostic(planner: WaypointPlanner, geo: MazeGeodesic, env, pairs_nodes: int):
    """Learned (calibrated steps) vs true geodesic distance (world units) on node pairs."""
    from scipy.stats import spearmanr

    g = planner.graph
    rng = np.random.default_rng(0)
    idx = rng.choice(g.num_nodes, min(pairs_nodes, g.num_nodes), replace=False)
    d = planner.distance
    learned = d.between(d.encode_states(g.states[idx]), d.encode_goals(g.goals[idx]))
    pos = g.goals[idx]
    true = geo.table[np.ix_(geo.cell_of(pos), geo.cell_of(pos))]
    off = ~np.eye(len(idx), dtype=bool)
    local = off & (true <= 2 * env.cell_size)
    kept = np.isfinite(g.edges)
    cells = geo.cell_of(g.goals)
    kept_true = geo.table[np.ix_(cells, cells)][kept]
    return {
        "spearman_all": float(spearmanr(learned[off], true[off]).statistic),
        "spearman_within_2_cells": float(spearmanr(learned[local], true[local]).statistic),
        "kept_edge_geodesic_median": float(np.median(kept_true)),
        "wormhole_edges": float(np.mean(kept_true > 2 * env.cell_size)),
        "kept_edges": int(kept.sum()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--mazes", nargs="+", default=["hardest", "u"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--env-steps", type=int, default=500_000, help="hardest/big training budget")
    p.add_argument("--u-env-steps", type=int, default=500_000, help="U-maze training budget")
    p.add_argument("--runs", type=Path, default=Path("/tmp/plan-runs"), help="run directories")
    p.add_argument("--episodes", type=int, default=128, help="evaluation episodes")
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--cutoff", type=float, default=PlannerConfig.cutoff, help="0: automatic")
    p.add_argument("--neighbors", type=int, default=PlannerConfig.neighbors)
    p.add_argument("--waypoint-min", type=float, default=PlannerConfig.waypoint_min)
    p.add_argument("--replan-every", type=int, default=PlannerConfig.replan_every)
    p.add_argument("--oracle", action="store_true", help="also plan over true distances")
    p.add_argument("--train-only", action="store_true", help="train missing runs, then stop")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/planning"))
    args = p.parse_args(argv)
    cfg = PlannerConfig(
        args.nodes, args.cutoff, args.neighbors, args.waypoint_min, args.replan_every
    )
    json_path = args.out.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else []
    for maze in args.mazes:
        for seed in args.seeds:
            steps = args.u_env_steps if maze == "u" else args.env_steps
            run_dir = args.runs / f"{maze}-{steps}-s{seed}"
            if not (run_dir / crl_run.CHECKPOINT_FILE).is_file():
                t0 = time.perf_counter()
                crl_run.train_run(
                    train_config(maze, seed, steps), run_dir, progress=False, log=lambda *_: None
                )
                print(f"trained {run_dir} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            if args.train_only:
                continue
            history = [json.loads(x) for x in (run_dir / crl_run.METRICS_FILE).open()]
            loaded = crl_run.load_trained(run_dir)
            env = loaded[0].eval_env
            flat, _ = evaluate(env, CRLPolicy(run_dir), args.episodes, args.eval_seed)
            built = build_planner(run_dir, cfg, loaded=loaded)
            planner = built.planner
            t0 = time.perf_counter()
            plan, _ = evaluate(env, planner, args.episodes, args.eval_seed)
            plan_eval_s = time.perf_counter() - t0
            starts = planner.graph.states[:50]
            goals = planner.graph.goals[::-1][:50]
            row = {
                "maze": maze,
                "seed": seed,
                "env_steps": history[-1]["env_steps"],
                "grad_steps": history[-1]["grad_steps"],
                "train_wall_s": history[-1]["wall_time"],
                "train_eval_success_any": history[-1]["success_any"],
                "flat": flat,
                "plan": plan,
                "planner": dataclasses.asdict(cfg),
                "graph_nodes": planner.graph.num_nodes,
                "graph_edges": planner.graph.num_edges,
                "graph_cutoff": planner.graph.cutoff,
                "graph_build_s": built.build_seconds,
                "decision_ms_b1": decision_ms(planner, starts, goals),
                "plan_eval_s": plan_eval_s,
                "episodes": args.episodes,
            }
            geo = MazeGeodesic(env)
            row["diagnostic"] = distance_diagnostic(planner, geo, env, 500)
            if args.oracle:
                # true distances keeping 0.6 from walls, edges up to 1.5 cells, replan each step
                clear = MazeGeodesic(env, resolution=8, clearance=0.6)
                ocfg = dataclasses.replace(cfg, cutoff=1.5 * env.cell_size, replan_every=1)
                g = planner.graph
                graph = WaypointGraph.build(g.states, g.goals, clear, ocfg.cutoff)
                oracle = WaypointPlanner(planner.inner, graph, clear, ocfg)
                row["oracle"], _ = evaluate(env, oracle, args.episodes, args.eval_seed)
            results = [r for r in results if (r["maze"], r["seed"]) != (maze, seed)] + [row]
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(results, indent=1))
            print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.train_only:
        write_report(args.out.with_suffix(".md"), report(results))


def report(results: list[dict]) -> list[str]:
    lines = [
        "# Planning over CRL's learned distance (issue 28)",
        "",
        "success_any on far goals, same starts and goals for flat and plan (paired).",
        "",
        "| maze | seed | env steps | train wall | flat | plan | oracle plan | nodes | edges "
        "| build | ms/decision (B=1) | Spearman all / ≤2 cells | wormhole edges |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["maze"], r["seed"])):
        d = r["diagnostic"]
        oracle = f"{r['oracle']['success_any']:.2f}" if "oracle" in r else "-"
        lines.append(
            f"| {r['maze']} | {r['seed']} | {r['env_steps']:,} | {r['train_wall_s']:.0f} s "
            f"| {r['flat']['success_any']:.2f} | {r['plan']['success_any']:.2f} | {oracle} "
            f"| {r['graph_nodes']} | {r['graph_edges']:,} | {r['graph_build_s']:.1f} s "
            f"| {r['decision_ms_b1']:.1f} | {d['spearman_all']:.2f} / "
            f"{d['spearman_within_2_cells']:.2f} | {d['wormhole_edges']:.3f} |"
        )
    lines.append("")
    for maze in sorted({r["maze"] for r in results}):
        rs = [r for r in results if r["maze"] == maze]
        f = np.array([r["flat"]["success_any"] for r in rs])
        pl = np.array([r["plan"]["success_any"] for r in rs])
        lines.append(
            f"- {maze}: flat {f.mean():.2f} ± {f.std():.2f}, plan {pl.mean():.2f} ± "
            f"{pl.std():.2f} over {len(rs)} seeds"
        )
    lines.append(f"- planner settings: {results[-1]['planner'] if results else '-'}")
    return lines


if __name__ == "__main__":
    main()
