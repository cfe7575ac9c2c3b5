"""What the advantage labels of a flywheel run say: n-step against chunk advantages
(``Q(s, chunk) - V(s)``) from the same value function, on the same frames.

    python benchmarks/flywheel_labels.py runs/bench-flywheel-push-emb-b2-s0 [more run dirs]

Per run, from its latest value function and episode store: the fraction of frames marked
positive per source (demonstrations, successful and failed rollouts, corrected frames), the
share of each advantage's variance that lies between episodes (η²; 1: the label says only
which episode a frame is from, 0: only which frame), the two advantages' correlation, and
how much ``Q`` moves when a frame's own chunk is swapped for another frame's (does the value
function read the chunk at all?), and with ``--indicator embedding`` or ``modulation`` whether the final RECAP
policy's loss depends on the indicator it is given. Written to ``benchmarks/results/flywheel-labels.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import numpy as np

from anyskill.algos.recap import advantage as A
from anyskill.algos.recap import recap as R
from anyskill.flywheel.context import RunContext
from anyskill.flywheel.loop import saved_config


def eta_squared(x: np.ndarray, start, stop) -> float:
    """Between-episode share of the variance of the per-frame ``x``."""
    x = np.asarray(x, np.float64)
    means = np.concatenate(
        [np.full(t - s, x[s:t].mean()) for s, t in zip(start, stop, strict=True)]
    )
    total = np.sum((x - x.mean()) ** 2)
    return float(np.sum((means - x.mean()) ** 2) / total) if total > 0 else float("nan")


def load(run_dir: Path) -> RunContext:
    return RunContext.open(dataclasses.replace(saved_config(run_dir), progress=False))


def analyse(run_dir: Path, seed: int = 0) -> dict:
    fw = load(run_dir)
    c = fw.cfg
    ds = fw.dataset()
    ep = ds.episodes
    data = fw.training_data(c.seed)
    vp = fw.value()[0]
    v = R.predict_values(fw.vf, vp, data)
    q = R.predict_values(fw.vf, vp, data, q=True)
    nstep = A.nstep_advantages(v, ep.start, ep.stop, ep.success, fw.horizon, c.advantage_n)
    chunk = q - v
    fam = R.family_ids(ds.tasks, ds.columns["task_index"])
    iv = np.asarray(ds.columns["intervention"], bool)
    # Q with another frame's chunk (same store, random frame): how much the chunk matters
    rng = np.random.default_rng(seed)
    other = rng.permutation(ds.num_frames)
    data_sw = copy.copy(data)
    data_sw.chunk_at = lambda idx: data.chunk_at(other[np.asarray(idx)])
    q_sw = R.predict_values(fw.vf, vp, data_sw, q=True)

    ep_of = np.repeat(np.arange(ds.num_episodes), ep.length)
    demo = (ep.source == "demonstration")[ep_of]
    ok = (ep.success > 0)[ep_of]
    groups = {
        "demonstrations": demo,
        "successful rollouts": ~demo & ok,
        "failed rollouts": ~demo & ~ok,
        "corrected frames": iv,
    }
    out = {"run": str(run_dir), "frames": int(ds.num_frames), "episodes": int(ds.num_episodes)}
    for name, adv in (("nstep", nstep), ("chunk", chunk)):
        thr = A.positive_threshold(adv, fam, c.positive_fraction)
        ind = A.indicator(adv, fam, thr, iv)
        out[name] = {
            "std": float(adv.std()),
            "eta2_advantage": eta_squared(adv, ep.start, ep.stop),
            "eta2_indicator": eta_squared(ind.astype(float), ep.start, ep.stop),
            "positive": {k: float(ind[m].mean()) if m.any() else None for k, m in groups.items()},
        }
    out["corr_nstep_chunk"] = float(np.corrcoef(nstep, chunk)[0, 1])
    out["q_own_minus_swapped_std"] = float(np.std(q - q_sw))
    out["q_minus_v_std"] = float(np.std(q - v))
    out["indicator_use"] = indicator_use(fw, data, seed=seed)
    return out


def indicator_use(fw: RunContext, data, frames: int = 4096, repeats: int = 4, seed: int = 0):
    """Does the final RECAP policy read the indicator? Its flow-matching loss on frames it was
    trained on (the last round's labels) with each frame's own indicator, with none and with
    the opposite one; the same noise and flow times for all three, so the differences are
    paired. A policy that ignores the input scores the same three times."""
    import jax
    import jax.numpy as jnp

    from anyskill.algos.vla.model import (
        INDICATOR_NEGATIVE,
        INDICATOR_NONE,
        INDICATOR_POSITIVE,
        _masked_mse,
        sample_time,
    )

    rounds = sorted(
        fw.paths.root.glob("advantage-r*.npz"), key=lambda p: int(p.stem.split("-r")[1])
    )
    if fw.cfg.indicator == "prompt" or not rounds:
        return None
    lab = np.load(rounds[-1])["indicator"]
    params = fw.policy_params("recap")
    model, n = fw.model, data._np
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(lab), size=min(frames, len(lab)), replace=False)

    @jax.jit
    def per_sample(params, obs, x_t, t, target, mask):  # the training loss, one per sample
        return jax.vmap(_masked_mse)(model.net.apply(params, obs, x_t, t), target, mask)

    own = np.where(lab[idx], INDICATOR_POSITIVE, INDICATOR_NEGATIVE).astype(np.int32)
    flip = np.where(lab[idx], INDICATOR_NEGATIVE, INDICATOR_POSITIVE).astype(np.int32)
    none = np.full_like(own, INDICATOR_NONE)
    out = {k: np.zeros(len(idx)) for k in ("own", "none", "opposite", "start")}
    key = jax.random.key(seed)
    for lo in range(0, len(idx), 512):
        j = idx[lo : lo + 512]
        b = data.sampler.batch_at(j)
        act = ((b.action - n["action_mean"]) / n["action_std"]).astype(np.float32)
        obs = data.obs_at(j)
        for _ in range(repeats):
            key, kn, kt = jax.random.split(key, 3)
            noise = jax.random.normal(kn, act.shape)
            t = sample_time(kt, act.shape[:1])
            x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * act
            for name, p, ind in (
                ("own", params, own),
                ("none", params, none),
                ("opposite", params, flip),
                ("start", fw.start_params, none),  # its indicator rows are zero
            ):
                o = obs.replace(indicator=jnp.asarray(ind[lo : lo + 512]))
                loss = per_sample(p, o, x_t, t, noise - act, b.action_mask)
                out[name][lo : lo + len(j)] += np.asarray(loss) / repeats

    def paired(a, b):
        d = out[a] - out[b]
        return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}

    return {
        "frames": int(len(idx)),
        "positive_share": float(lab[idx].mean()),
        "loss": {k: float(v.mean()) for k, v in out.items()},
        "none_minus_own": paired("none", "own"),
        "opposite_minus_own": paired("opposite", "own"),
        "start_minus_own": paired("start", "own"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="flywheel run directories")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flywheel-labels.md"))
    args = ap.parse_args()
    res = [analyse(r) for r in args.runs]
    lines = [
        "# Advantage labels: n-step vs chunk (Q(s, chunk) − V(s)), same value function",
        "",
        "`python benchmarks/flywheel_labels.py " + " ".join(map(str, args.runs)) + "`",
        "",
        "| run | advantage | η² advantage | η² indicator | positive: demos | successful | "
        "failed | corrected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        for k in ("nstep", "chunk"):
            p = r[k]["positive"]
            f = [f"{p[g]:.2f}" if p[g] is not None else "–" for g in p]
            lines.append(
                f"| {Path(r['run']).name} | {k} | {r[k]['eta2_advantage']:.2f} | "
                f"{r[k]['eta2_indicator']:.2f} | " + " | ".join(f) + " |"
            )
    lines += [
        "",
        "| run | corr(n-step, chunk) | std Q − V | std Q(own) − Q(swapped chunk) |",
        "|---|---|---|---|",
    ]
    for r in res:
        lines.append(
            f"| {Path(r['run']).name} | {r['corr_nstep_chunk']:.2f} | {r['q_minus_v_std']:.4f} "
            f"| {r['q_own_minus_swapped_std']:.4f} |"
        )
    use = [r for r in res if r["indicator_use"]]
    if use:
        lines += [
            "",
            "Does the final RECAP policy read the indicator? Its flow-matching loss on frames of"
            " its last training round with their own indicator, none and the opposite one"
            " (paired: the same noise and flow times; ± one standard error); for scale, the"
            " starting policy's loss on the same frames:",
            "",
            "| run | frames | loss, own | none − own | opposite − own | starting policy − own |",
            "|---|---|---|---|---|---|",
        ]
        for r in use:
            u = r["indicator_use"]
            d = [u[k] for k in ("none_minus_own", "opposite_minus_own", "start_minus_own")]
            lines.append(
                f"| {Path(r['run']).name} | {u['frames']} | {u['loss']['own']:.4f} | "
                + " | ".join(f"{x['mean']:+.4f} ± {x['se']:.4f}" for x in d)
                + " |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
