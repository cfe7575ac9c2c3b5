"""High-level inference on tabletop-sort (issue 27): flat vs predicted vs oracle subtasks.

Evaluates a flat run and a hierarchical run (``--model.subtasks``) trained on the same sort
demonstrations: success on the seen and held-out splits, with the training object count and
with more object slots (``--num-objects``), and subtask accuracy — closed loop (agreement
with the oracle at chunk boundaries) and offline (the head's argmax against the labels of
fresh demonstrations, which the training never saw).

    python benchmarks/subtasks_sort.py --flat RUN_FLAT --hier RUN_HIER [--episodes 64]
        [--objects 3 4] [--demos DATA] [--out benchmarks/results/subtasks_sort.md]

Prints a markdown table and writes it (and the raw numbers as JSON next to it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np


def closed_loop(policy, env, split: str, episodes: int, replan: int, seed: int) -> dict:
    from anyskill.envs.tabletop.subtasks import table_of
    from anyskill.rollout import JaxBatchEnv, rollout

    benv = JaxBatchEnv(dataclasses.replace(env, split=split))
    sel = getattr(policy, "selector", None)
    if sel is not None:
        sel.log.clear()
    ep = rollout(benv, policy, jax.random.key(seed), num_envs=episodes, replan_every=replan)
    present = np.array([int((table_of(ep.state[i, 0])[0] >= 0).sum()) for i in range(episodes)])
    out = {"success": float(ep.success.mean()), "episodes": episodes}
    for k in sorted(set(present.tolist())):
        out[f"success_{k}obj"] = float(ep.success[present == k].mean())
        out[f"n_{k}obj"] = int((present == k).sum())
    if sel is not None:
        acc = sel.accuracy(ep.length, replan)
        out["subtask_acc"] = float(np.nanmean(acc))
    return out


def offline_accuracy(run: Path, demos: Path) -> dict:
    """The head's argmax against the labels of demonstrations it never saw."""
    from anyskill.algos.vla.data import TrainingData
    from anyskill.algos.vla.policy import VLAPolicy
    from anyskill.data.reader import Dataset

    policy = VLAPolicy(run)
    ds = Dataset.open(demos)
    data = TrainingData.build(ds, policy.cfg.model, 64, 0, normalizer=policy.normalizer)
    labels = data.subtask_class
    idx = np.flatnonzero(labels >= 0)
    probs = jax.jit(policy.model.subtask_probs)
    hits = []
    for a in range(0, len(idx), 1024):
        i = idx[a : a + 1024]
        p = np.asarray(probs(policy.params, data.obs_at(i)))
        p = np.where(np.concatenate([np.ones((len(i), 1), bool), _present(ds, i)], 1), p, -1)
        hits.append(p.argmax(-1) == labels[i])
    hits = np.concatenate(hits)
    # around the known label lag: the first frames of each subtask (the label switches when
    # the previous object's centre enters its zone; the expert may still be nudging it)
    ep_of = np.asarray(ds.columns["episode_index"]).reshape(-1)[idx]
    sub = labels[idx]
    start = np.r_[True, (sub[1:] != sub[:-1]) | (ep_of[1:] != ep_of[:-1])]
    since = np.zeros(len(idx), int)
    for j in range(1, len(idx)):
        since[j] = 0 if start[j] else since[j - 1] + 1
    late = since >= 5
    return {
        "frames": int(len(idx)),
        "accuracy": float(hits.mean()),
        "accuracy_after_5_frames": float(hits[late].mean()),
        "accuracy_first_5_frames": float(hits[~late].mean()),
    }


def _present(ds, idx) -> np.ndarray:
    from anyskill.algos.vla.subtasks import slot_tables

    state = np.asarray(ds.columns["observation.state"][idx], np.float32).reshape(len(idx), -1)
    return slot_tables(state)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flat", type=Path)
    ap.add_argument("--hier", type=Path)
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--objects", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--splits", nargs="+", default=["train", "heldout"])
    ap.add_argument("--replan-every", type=int, default=2)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--demos", type=Path, default=None, help="fresh labelled demonstrations")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument(
        "--arms", nargs="+", default=["flat", "predicted", "oracle"], help="which arms to run"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/subtasks_sort.md"))
    args = ap.parse_args()

    from anyskill import envs
    from anyskill.algos.vla.policy import VLAPolicy, with_object_slots

    arms = [
        (name, run, mode)
        for name, run, mode in [
            ("flat", args.flat, "none"),
            ("predicted subtasks", args.hier, "predicted"),
            ("oracle subtasks", args.hier, "oracle"),
        ]
        if name.split()[0] in args.arms
    ]
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "cells": []}
    rows = []
    for name, run, mode in arms:
        base = VLAPolicy(run, subtasks=mode, subtask_margin=args.margin)
        for n_obj in args.objects:
            env = envs.make("tabletop-sort", num_objects=n_obj)
            policy = with_object_slots(base, env)
            for split in args.splits:
                t = time.perf_counter()
                r = closed_loop(policy, env, split, args.episodes, args.replan_every, args.seed)
                r.update(arm=name, objects=n_obj, split=split, seconds=time.perf_counter() - t)
                results["cells"].append(r)
                print(json.dumps(r), flush=True)
                per_count = ", ".join(
                    f"{k[8:]} {r[k]:.2f} (n={r['n_' + k[8:]]})"
                    for k in r
                    if k.startswith("success_") and k.endswith("obj")
                )
                acc = f"{r['subtask_acc']:.2f}" if "subtask_acc" in r else "-"
                rows.append(
                    f"| {name} | {n_obj} | {split} | {r['success']:.2f} | {per_count} | {acc} |"
                )
    if args.demos is not None and args.hier is not None:
        results["offline"] = offline_accuracy(args.hier, args.demos)
        print(json.dumps(results["offline"]), flush=True)
    table = [
        "| arm | object slots | split | success | by objects present | subtask acc. (closed loop) |",
        "|---|---:|---|---:|---|---:|",
        *rows,
    ]
    text = "\n".join(table)
    if "offline" in results:
        o = results["offline"]
        text += (
            f"\n\nOffline subtask accuracy on {o['frames']} labelled frames of fresh "
            f"demonstrations: {o['accuracy']:.3f} (first 5 frames of a subtask "
            f"{o['accuracy_first_5_frames']:.3f}, later {o['accuracy_after_5_frames']:.3f})"
        )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
