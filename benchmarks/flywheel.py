"""The deployment flywheel (RECAP) against its baselines over several seeds, and test-time
compute (guidance weight, value-guided selection among N chunks) on the final policy.

    python benchmarks/flywheel.py --seeds 0 1 2          # the demo's configuration
    python benchmarks/flywheel.py --name push --seeds 0 1 2 -- --env tabletop-push --demos 200

Everything after ``--`` is an ``anyskill flywheel`` flag (see ``anyskill flywheel --help``);
each seed is one such run (``runs/bench-flywheel-NAME-sSEED``, resumed if it exists) and the
summary (mean ± std over seeds per round and method) goes to
``benchmarks/results/flywheel-NAME.md``. NAME defaults to the env.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from common import write_report

from anyskill import checkpoint
from anyskill.flywheel.artifacts import LABELS
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.context import RunContext
from anyskill.flywheel.loop import run_flywheel
from anyskill.flywheel.phases import outcome_metrics
from anyskill.policies.base import ChunkPolicy


def test_time_compute(fw: RunContext, betas, candidates, episodes: int) -> list[dict]:
    """Success, throughput and sampling cost of the final RECAP policy per (β, N)."""
    import jax

    c = fw.cfg
    pol = fw.policy_params("recap")
    vp = fw.value()[0]
    out = []
    for beta in betas:
        for n in candidates:
            policy = fw.deployment.policy(pol, recap=True, beta=beta, best_of=n, value_params=vp)
            key = jax.random.key(c.seed + 99)
            fw.deployment.evaluate(policy, key, episodes, "ttc")  # compile
            t0 = time.perf_counter()
            ep = fw.deployment.evaluate(policy, jax.random.fold_in(key, 1), episodes, "ttc")
            wall = time.perf_counter() - t0
            m = outcome_metrics(ep.success, ep.length, fw.env.control_hz)
            n_chunks = -(-fw.env.horizon // c.replan_every)
            out.append(
                {
                    "beta": beta,
                    "candidates": n,
                    **m,
                    "ms_per_chunk_batch": 1000 * wall / n_chunks,
                }
            )
            print(out[-1], flush=True)
    return out


class AskedFor(ChunkPolicy):
    """``inner`` told "advantage: negative" (``positive=False``) or given no indicator
    (``None``): as words of the prompt or as the indicator input (``kind``)."""

    def __init__(self, inner, kind: str, positive: bool | None):
        from anyskill.policies.base import INDICATOR_NEGATIVE, INDICATOR_NONE

        self.inner, self.kind, self.positive = inner, kind, positive
        self.value = INDICATOR_NONE if positive is None else INDICATOR_NEGATIVE
        self.spec = inner.spec

    def act(self, obs, key):
        from anyskill.policies.base import INDICATOR, PROMPT, prompt_with_indicator

        if self.kind == "prompt":
            words = [prompt_with_indicator(str(p), self.positive) for p in obs[PROMPT]]
            return self.inner.act({**obs, PROMPT: words}, key)
        return self.inner.act({**obs, INDICATOR: np.full(len(obs[PROMPT]), self.value)}, key)


def indicator_ablation(fw: RunContext, episodes: int) -> dict:
    """The final RECAP policy asked for "advantage: positive", given no indicator, and asked
    for "advantage: negative" (β = 1, the same episodes): does it use the indicator?"""
    import jax

    c = fw.cfg
    pol = fw.policy_params("recap")
    kind = "prompt" if c.indicator == "prompt" else "input"
    plain = fw.deployment.policy(pol, recap=False)
    policies = {
        "positive": fw.deployment.policy(pol, recap=True, beta=1.0),
        "none": AskedFor(plain, kind, None),
        "negative": AskedFor(plain, kind, False),
    }
    out = {}
    for name, policy in policies.items():
        ep = fw.deployment.evaluate(policy, jax.random.key(c.seed + 77), episodes, "ablation")
        out[name] = outcome_metrics(ep.success, ep.length, fw.env.control_hz)
    print("indicator ablation", {k: round(v["success"], 3) for k, v in out.items()}, flush=True)
    return out


def _fresh(path: Path, fw: RunContext) -> bool:
    """Whether ``path`` was written after ``fw``'s run last changed (not left over from an
    earlier run of the same name)."""
    return path.exists() and path.stat().st_mtime >= fw.paths.state.stat().st_mtime


def _ablation_cached(path: Path, args, fw: RunContext) -> bool:
    """Whether ``path`` holds the indicator ablation of ``fw``'s finished run, with as many
    episodes per prompt as asked."""
    if not _fresh(path, fw):
        return False
    rows = json.loads(path.read_text()).values()
    return all(r.get("episodes") == args.indicator_episodes for r in rows)


def _ttc_cached(path: Path, args, fw: RunContext) -> bool:
    """Whether ``path`` already holds this sweep (same β, N and episode count) of the final
    policy of ``fw``'s finished run: a re-summary then skips the ~10-minute sweep."""
    if not _fresh(path, fw):
        return False
    rows = json.loads(path.read_text())
    grid = sorted((r["beta"], r["candidates"]) for r in rows)
    want = sorted((float(b), int(n)) for b in args.betas for n in args.candidates)
    return grid == want and all(r.get("episodes") == args.ttc_episodes for r in rows)


def _f(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def main():
    import sys

    import tyro

    argv = sys.argv[1:]
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Flags after -- go to every seed's `anyskill flywheel` run.",
    )
    ap.add_argument("--name", default=None, help="run-dir and results name (default: the env)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--betas", type=float, nargs="+", default=[1.0, 1.5, 2.5])
    ap.add_argument("--candidates", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--ttc-episodes", type=int, default=128)
    ap.add_argument(
        "--indicator-episodes",
        type=int,
        default=256,
        help="episodes per prompt of the indicator ablation (every seed; 0: skip)",
    )
    ap.add_argument(
        "--no-ttc", action="store_true", help="skip the test-time compute sweep (first seed)"
    )
    args = ap.parse_args(own)
    for bad in ("--seed", "--run-dir", "--resume"):
        if any(f == bad or f.startswith(bad + "=") for f in flags):
            raise SystemExit(f"flywheel.py: {bad} is set per seed by the benchmark; drop it")
    base = tyro.cli(FlywheelConfig, args=flags, prog="flywheel.py ... --")
    base = dataclasses.replace(base, videos=False, progress=False)
    name = args.name or base.env
    cmdline = (
        "python benchmarks/flywheel.py "
        + " ".join(own)
        + (" -- " + " ".join(flags) if flags else "")
    )

    results = {}
    for seed in args.seeds:
        cfg = dataclasses.replace(
            base, run_dir=Path(f"runs/bench-flywheel-{name}-s{seed}"), seed=seed
        )
        cfg = dataclasses.replace(cfg, resume=(cfg.run_dir / "state.json").exists())
        t0 = time.perf_counter()
        st = run_flywheel(cfg)
        fw = RunContext.open(cfg)  # the finished run's policies (set-up is done)
        results[seed] = {
            "rows": list(st.rows),
            "detection": list(st.detection),
            "minutes": (time.perf_counter() - t0) / 60,
        }
        ind_path = Path("benchmarks/results") / f"flywheel-{name}-indicator-s{seed}.json"
        if args.indicator_episodes and not _ablation_cached(ind_path, args, fw):
            ind = indicator_ablation(fw, args.indicator_episodes)
            checkpoint.atomic_write_bytes(ind_path, json.dumps(ind, indent=1).encode())
        if _fresh(ind_path, fw):
            results[seed]["indicator"] = json.loads(ind_path.read_text())
        ttc_path = Path("benchmarks/results") / f"flywheel-{name}-ttc-s{seed}.json"
        if seed == args.seeds[0] and not args.no_ttc and not _ttc_cached(ttc_path, args, fw):
            ttc = test_time_compute(fw, args.betas, args.candidates, args.ttc_episodes)
            ttc_path.write_text(json.dumps(ttc, indent=1))
        if seed == args.seeds[0] and _fresh(ttc_path, fw):
            results[seed]["test_time"] = json.loads(ttc_path.read_text())
    out = Path("benchmarks/results") / f"flywheel-{name}.json"
    out.write_text(json.dumps(results, indent=1))

    # evaluations with the corrector on call (runs made before --eval-interventions lack them)
    assisted = any(
        "intervention_rate" in r and r["method"] in LABELS
        for s in results.values()
        for r in s["rows"]
    )
    lines = [
        f"# Flywheel (RECAP) vs baselines on {base.env}, seeds {args.seeds}",
        "",
        f"`{cmdline}` (arch {base.model.arch}, {base.demos} demos at noise {base.demo_noise}, "
        f"{base.init_steps} starting steps, {base.episodes_per_round} episodes and "
        f"{base.policy_steps} fine-tuning steps per round, lr {base.lr:g}, replan every "
        f"{base.replan_every}, β {base.beta:g})",
        "",
        "| round | method | success | failure | time to success (s) | throughput (/h) |"
        + (" intervention rate | success with corrections |" if assisted else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if assisted else ""),
    ]
    keys = sorted(
        {
            (r["round"], r["method"])
            for s in results.values()
            for r in s["rows"]
            if r["method"] in LABELS
        }
    )
    for rnd, m in keys:
        rs = [
            r for s in results.values() for r in s["rows"] if (r["round"], r["method"]) == (rnd, m)
        ]

        def ms(k, spec=".2f", rs=rs):
            v = np.array([r[k] for r in rs if r.get(k) is not None], float)
            if not len(v):
                return "–"
            few = f" (n = {len(v)})" if len(v) < len(rs) else ""
            return f"{v.mean():{spec}} ± {v.std():{spec}}{few}"

        lines.append(
            f"| {rnd} | {LABELS[m]} | {ms('success')} | {ms('failure')} | "
            f"{ms('time_to_success_s', '.1f')} | {ms('throughput_per_h', '.0f')} |"
            + (
                f" {ms('intervention_rate', '.3f')} | {ms('assisted_success')} |"
                if assisted
                else ""
            )
        )
    lines += [
        "",
        "Deployment (data collection, corrector on call):",
        "",
        "| round | success | intervention rate | episodes corrected |",
        "|---|---|---|---|",
    ]
    for rnd in sorted(
        {
            r["round"]
            for s in results.values()
            for r in s["rows"]
            if r["method"].startswith("deployment")
        }
    ):
        rs = [
            r
            for s in results.values()
            for r in s["rows"]
            if r["method"].startswith("deployment") and r["round"] == rnd
        ]
        lines.append(
            f"| {rnd} | {np.mean([r['success'] for r in rs]):.2f} | "
            f"{np.mean([r['intervention_rate'] for r in rs]):.3f} | "
            f"{np.mean([r['corrected_episodes'] for r in rs]):.2f} |"
        )
    lines += [
        "",
        "Early failure detection (last round, per seed):",
        "",
        "| seed | threshold | precision | recall | lead steps | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for seed, s in results.items():
        # none with one round: the detection scores episodes the value function has not seen
        for r in s["detection"][-1]["rows"] if s["detection"] else []:
            lines.append(
                f"| {seed} | {r['threshold']:.2f} | {_f(r['precision'])} | {_f(r['recall'])} | "
                f"{_f(r['mean_lead_steps'], '.1f')} | {r['flagged']} |"
            )
    inds = {seed: s["indicator"] for seed, s in results.items() if "indicator" in s}
    if inds:
        lines += [
            "",
            "Indicator ablation: the final RECAP policy asked three ways (β = 1, the same "
            f"{args.indicator_episodes} episodes each; indicator as {base.indicator}):",
            "",
            "| seed | advantage: positive | no indicator | advantage: negative |",
            "|---|---|---|---|",
        ]
        for seed, d in inds.items():
            lines.append(
                f"| {seed} | {d['positive']['success']:.2f} | {d['none']['success']:.2f} | "
                f"{d['negative']['success']:.2f} |"
            )
    tt = results[args.seeds[0]].get("test_time", [])
    if tt:
        lines += [
            "",
            f"Test-time compute, final RECAP policy of seed {args.seeds[0]}:",
            "",
            "| β | N chunks | success | throughput (/h) | ms per batched chunk |",
            "|---|---|---|---|---|",
        ]
        for r in tt:
            lines.append(
                f"| {r['beta']} | {r['candidates']} | {r['success']:.2f} | "
                f"{r['throughput_per_h']:.0f} | {r['ms_per_chunk_batch']:.1f} |"
            )
    lines += [
        "",
        "Minutes of this invocation per seed (0 when the run was already complete): "
        + ", ".join(f"{s['minutes']:.1f}" for s in results.values()),
    ]
    write_report(Path("benchmarks/results") / f"flywheel-{name}.md", lines)


if __name__ == "__main__":
    main()
