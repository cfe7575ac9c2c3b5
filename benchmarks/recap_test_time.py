"""Test-time variants of finished flywheel runs, on the episodes of their last evaluation:
RECAP's classifier-free guidance sweep and best-of-N chunks scored by the run's critic
``Q(s, chunk)``, from filtered BC (issue 24's baseline) and from the other methods.

    python benchmarks/recap_test_time.py /tmp/demo-awr /tmp/demo-awr-s1 /tmp/demo-awr-s2

Every policy of a run meets the same ``--episodes`` episodes (the run's last-round evaluation
key and seeds, so β = the run's own ``--beta`` reproduces its report's RECAP row). Successes
per hour of robot time, success rate and median time to success among successes, per run
(paired seeds) and as mean ± s.e. Written to ``benchmarks/results/recap-test-time.md`` and
``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from anyskill.flywheel.context import RunContext
from anyskill.flywheel.loop import saved_config
from anyskill.flywheel.phases import evaluation_episodes, outcome_metrics


def variants(ctx: RunContext, betas, best_of, methods=None) -> list[tuple[str, object]]:
    """``(label, policy)`` of every variant evaluated on a run (``methods``: only these of
    start, recap, filtered, bc, awr; None: all the run has)."""
    c, d = ctx.cfg, ctx.deployment
    vp = ctx.value()[0]
    want = set(methods or ("start", "recap", "filtered", "bc", "awr"))
    out = [("start", d.policy(ctx.start_params, recap=False))] if "start" in want else []
    if "recap" in want:
        recap = ctx.policy_params("recap")
        out += [(f"recap β={b:g}", d.policy(recap, recap=True, beta=b)) for b in betas]
    names = ["filtered", "bc"] if c.baselines else []
    names += ["awr"] if c.awr_beta is not None else []
    names = [n for n in names if n in want]
    for name in names:
        params = ctx.policy_params(name)
        out.append((name, d.policy(params, recap=False)))
        out += [
            (f"{name} best-of-{n}", d.policy(params, recap=False, best_of=n, value_params=vp))
            for n in best_of
        ]
    return out


def evaluate_run(run: Path, betas, best_of, episodes: int | None, methods=None) -> dict:
    ctx = RunContext.open(dataclasses.replace(saved_config(run), progress=False))
    c = ctx.cfg
    n = episodes or c.eval_episodes
    key, purpose = evaluation_episodes(c, c.rounds)
    rows = {}
    for label, policy in variants(ctx, betas, best_of, methods):
        t0 = time.perf_counter()
        ep = ctx.deployment.evaluate(policy, key, n, purpose)
        m = outcome_metrics(ep.success, ep.length, ctx.env.control_hz)
        rows[label] = {**m, "wall_s": time.perf_counter() - t0}
        print(f"{run.name:<16} {label:<22} success {m['success']:.2f} "
              f"throughput {m['throughput_per_h']:.0f}/h median t {m['median_time_to_success_s']}",
              flush=True)  # fmt: skip
    return {"run": str(run), "seed": c.seed, "env": c.env, "episodes": n, "rows": rows}


def table(results: list[dict]) -> str:
    labels = list(results[0]["rows"])
    lines = [
        "| policy | throughput /h, per seed | mean ± s.e. | success | median time to success (s) |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        tp = np.array([r["rows"][label]["throughput_per_h"] for r in results])
        ok = np.array([r["rows"][label]["success"] for r in results])
        med = [r["rows"][label]["median_time_to_success_s"] for r in results]
        se = tp.std(ddof=1) / np.sqrt(len(tp)) if len(tp) > 1 else float("nan")
        lines.append(
            f"| {label} | {' / '.join(f'{x:.0f}' for x in tp)} | {tp.mean():.0f} ± {se:.0f} | "
            f"{ok.mean():.2f} | {' / '.join('–' if m is None else f'{m:.1f}' for m in med)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="finished flywheel run directories")
    ap.add_argument("--betas", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 5.0])
    ap.add_argument("--best-of", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--episodes", type=int, default=None, help="default: the run's own")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recap-test-time.md"))
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=("start", "recap", "filtered", "bc", "awr"),
        default=None,
        help="evaluate only these methods' policies (default: every one the run trained)",
    )
    args = ap.parse_args()
    results = [
        evaluate_run(r, args.betas, args.best_of, args.episodes, args.methods) for r in args.runs
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    text = (
        f"# Test-time variants of finished flywheel runs\n\n`python benchmarks/recap_test_time.py "
        f"{' '.join(map(str, args.runs))}`\n\n{table(results)}\n"
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
