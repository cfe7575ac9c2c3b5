"""The flywheel's report: ``RUN/report.md`` with per-round tables, plots and rollout videos."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from anyskill import checkpoint
from anyskill.flywheel.deploy import CorrectorConfig

METHOD_ORDER = ("start", "recap", "bc", "filtered")


def _fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def outcome_table(rows: list[dict]) -> str:
    lines = [
        "| round | method | success | failure | time to success (s) | throughput (successes/h) "
        "| intervention rate (frames) | success with corrections |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from anyskill.flywheel.loop import LABELS

    for r in sorted(
        (r for r in rows if r["method"] in METHOD_ORDER),
        key=lambda r: (r["round"], METHOD_ORDER.index(r["method"])),
    ):
        lines.append(
            f"| {r['round']} | {LABELS[r['method']]} | {_fmt(r['success'])} | "
            f"{_fmt(r['failure'])} | {_fmt(r['time_to_success_s'], '.1f')} | "
            f"{_fmt(r['throughput_per_h'], '.0f')} | {_fmt(r.get('intervention_rate'), '.3f')} | "
            f"{_fmt(r.get('assisted_success'))} |"
        )
    return "\n".join(lines)


def deployment_table(rows: list[dict]) -> str:
    lines = [
        "| round | deployed policy | success (with corrections) | intervention rate (frames) "
        "| episodes corrected |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"].startswith("deployment"):
            who = "starting policy" if "start" in r["method"] else f"RECAP round {r['round'] - 1}"
            lines.append(
                f"| {r['round']} | {who} | {_fmt(r['success'])} | "
                f"{_fmt(r['intervention_rate'], '.3f')} | {_fmt(r['corrected_episodes'])} |"
            )
    return "\n".join(lines)


def detection_table(detection: list[dict]) -> str:
    lines = [
        "| round | threshold | precision | recall | mean lead (steps before the end) | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for d in detection:
        for r in d["rows"]:
            lines.append(
                f"| {d['round']} | {r['threshold']:.2f} | {_fmt(r['precision'])} | "
                f"{_fmt(r['recall'])} | {_fmt(r['mean_lead_steps'], '.1f')} | {r['flagged']} |"
            )
    return "\n".join(lines)


def plot_rounds(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from anyskill.flywheel.loop import LABELS

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    start = [r for r in rows if r["method"] == "start"]
    for m in METHOD_ORDER[1:]:
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["round"])
        if not rs:
            continue
        rs = start + rs
        for ax, key in zip(axes, ("success", "throughput_per_h"), strict=True):
            ax.plot([r["round"] for r in rs], [r[key] for r in rs], marker="o", label=LABELS[m])
    axes[0].set(xlabel="round", ylabel="success rate", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="round", ylabel="successes per hour of robot time")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_values(values_per_ep: list[np.ndarray], success: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    shown = {True: 0, False: 0}
    for v, s in zip(values_per_ep, success, strict=True):
        s = bool(s)
        if shown[s] >= 8:
            continue
        shown[s] += 1
        ax.plot(np.arange(len(v)), v, color="tab:green" if s else "tab:red", alpha=0.6, lw=1)
    ax.plot([], [], color="tab:green", label="successful episodes")
    ax.plot([], [], color="tab:red", label="failed episodes")
    ax.set(xlabel="step", ylabel="predicted value", ylim=(-1.02, 0.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def rollout_video(fw, name: str, path: Path, episodes: int = 4, size: int = 96) -> tuple[Path, str]:
    """A GIF of ``episodes`` rollouts of policy ``name`` side by side, and its caption (each
    episode's instruction and outcome, left to right)."""
    from anyskill.envs.render import save_video

    conditioned = name == "recap"
    deploy = fw.deployer(conditioned, episodes, CorrectorConfig(kind="none"), record_images=size)
    params = fw.start_params if name == "start" else fw.policy_params(name)
    ep = deploy(params, jax.random.fold_in(jax.random.key(fw.cfg.seed), 777))
    frames = ep.images  # [B, T, S, S, 3]
    t = int(ep.length.max())
    for i in range(episodes):  # hold each episode's last frame
        frames[i, ep.length[i] :] = frames[i, max(ep.length[i] - 1, 0)]
        if ep.success[i]:  # a green border once it succeeded
            frames[i, ep.length[i] :, :3] = (40, 200, 60)
            frames[i, ep.length[i] :, -3:] = (40, 200, 60)
    tiled = np.concatenate(list(frames[:, : t + 5]), axis=2)
    caption = "Left to right: " + "; ".join(
        f"“{text}” — {'success' if ok else 'failure'} after {n} steps"
        for text, ok, n in zip(ep.task, ep.success, ep.length, strict=True)
    )
    return save_video(tiled, path, fps=float(fw.env.control_hz)), caption


def write_report(fw, st: dict) -> Path:
    """Write ``RUN/report.md`` (and its plots and videos) from the run's state so far."""
    d = fw.dir
    rows = st["rows"]
    plot_rounds(rows, d / "rounds.png")
    rnd = max(r["round"] for r in rows)
    adv = np.load(d / f"advantage-r{rnd}.npz")
    from anyskill.data.reader import Dataset

    ds = Dataset.open(fw.data_dir)
    ep = ds.episodes
    tag = ep.policy_version == f"recap-r{rnd - 1}"
    per_ep = [adv["values"][s:t] for s, t in zip(ep.start[tag], ep.stop[tag], strict=True)]
    plot_values(per_ep, ep.success[tag] > 0, d / "values.png")
    videos = []
    if fw.cfg.videos and rnd == fw.cfg.rounds:
        for name in ("start", "recap"):
            videos.append(rollout_video(fw, name, d / f"rollouts-{name}.gif"))
    value_meta = checkpoint.load_meta(d / "value.msgpack")
    c = fw.cfg
    parts = [
        f"# anyskill flywheel report: {c.env}",
        "",
        f"{rnd} of {c.rounds} rounds; policy `{fw.mcfg.arch}`; {c.demos} demonstrations, "
        f"{c.episodes_per_round} deployed episodes per round (corrector: {c.corrector.kind}, "
        f"trigger {c.corrector.trigger}, watching {c.corrector.fraction:.0%} of envs); "
        f"{c.policy_steps} fine-tuning steps per round per method; advantages "
        + (f"n-step (n = {c.advantage_n})" if c.advantage == "nstep" else "Q(s, chunk) − V(s)")
        + f", {c.positive_fraction:.0%} positive per task family, indicator "
        f"as {c.indicator}, dropout {c.indicator_dropout:.0%}, guidance β = {c.beta}. Data: {ds.num_episodes} "
        f"episodes, {ds.num_frames} frames in `{fw.data_dir}`.",
        "",
        f"## Evaluation ({c.eval_episodes} episodes per policy per round)",
        "",
        "Success, failure, time to success and throughput without a corrector; intervention "
        "rate and success with corrections from a second run with the corrector on call as in "
        "deployment (its own episodes, the same for every method of a round; – where not "
        "measured).",
        "",
        outcome_table(rows),
        "",
        "![success and throughput per round](rounds.png)",
        "",
        "## Deployment (the data each round collected)",
        "",
        deployment_table(rows),
        "",
        "## Value function",
        "",
        f"Distributional over 201 bins, last training loss {value_meta.get('loss', float('nan')):.3f}. "
        "Early failure detection, held out: the previous round's value function on this "
        "round's uncorrected rollouts, which it was not trained on (an episode is flagged when "
        "its predicted value first drops below the threshold; lead = steps from the flag to "
        "the episode's end; from round 2 on):",
        "",
        detection_table(st["detection"]) if st["detection"] else "(none yet)",
        "",
        "![predicted value along episodes](values.png)",
        "",
    ]
    if videos:
        parts += ["## Rollouts", ""]
        for v, caption in videos:
            parts += [f"![{v.stem}]({v.name})", "", caption + ".", ""]
    path = d / "report.md"
    checkpoint.atomic_write_bytes(path, "\n".join(parts).encode())
    checkpoint.atomic_write_bytes(d / "results.json", json.dumps(st, indent=1).encode())
    return path
