"""The flywheel's report: ``RUN/report.md`` with per-round tables, plots and rollout videos.

It reads the run's artifacts only (see :mod:`anyskill.flywheel.artifacts`): ``config.json``,
``state.json``, the episode store, ``advantage-rK.npz``, ``value.msgpack``'s metadata and the
videos the evaluation recorded — so it can be written again from a finished run's directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from anyskill import checkpoint, rundir
from anyskill.algos.recap.recap import Advantages
from anyskill.flywheel.artifacts import LABELS, METHODS, FlywheelState, RunPaths, policy_version
from anyskill.flywheel.config import FlywheelConfig

#: rows of the outcome table and lines of the plot, in this order
METHOD_ORDER = ("start", *METHODS)


def _fmt(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def outcome_table(rows: list[dict]) -> str:
    lines = [
        "| round | method | success | failure | time to success (s), mean / median "
        "| throughput (successes/h) "
        "| intervention rate (frames) | success with corrections |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        (r for r in rows if r["method"] in METHOD_ORDER),
        key=lambda r: (r["round"], METHOD_ORDER.index(r["method"])),
    ):
        lines.append(
            f"| {r['round']} | {LABELS[r['method']]} | {_fmt(r['success'])} | "
            f"{_fmt(r['failure'])} | {_fmt(r['time_to_success_s'], '.1f')} / "
            f"{_fmt(r.get('median_time_to_success_s'), '.1f')} | "
            f"{_fmt(r['throughput_per_h'], '.0f')} | {_fmt(r.get('intervention_rate'), '.3f')} | "
            f"{_fmt(r.get('assisted_success'))} |"
        )
    return "\n".join(lines)


def deployment_table(rows: list[dict], deployed: str = "recap") -> str:
    """Each round's deployment; rounds 2 on deployed method ``deployed``."""
    lines = [
        "| round | deployed policy | success (with corrections) | intervention rate (frames) "
        "| episodes corrected |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"].startswith("deployment"):
            who = (
                "starting policy"
                if "start" in r["method"]
                else f"{LABELS[deployed]} round {r['round'] - 1}"
            )
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


def plot_rounds(rows: list[dict], path: Path, deployments: bool = False) -> None:
    """Success and throughput per round of every evaluated method; ``deployments``: of each
    round's deployment instead (a run without a simulator: what its robots achieved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    start = [r for r in rows if r["method"] == "start"]
    lines = {m: [r for r in rows if r["method"] == m] for m in METHOD_ORDER[1:]}
    if deployments:
        start = []
        lines = {"deployment": [r for r in rows if r["method"].startswith("deployment")]}
    for m, rs in lines.items():
        if not rs:
            continue
        rs = start + sorted(rs, key=lambda r: r["round"])
        label = "deployed policy, on the robots" if deployments else LABELS[m]
        for ax, key in zip(axes, ("success", "throughput_per_h"), strict=True):
            ax.plot([r["round"] for r in rs], [r[key] for r in rs], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:  # rounds are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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


def _evaluation(c: FlywheelConfig, rows: list[dict]) -> list[str]:
    """The report's evaluation section (a run without a simulator has none: its robots'
    deployments, the next section, are its measure)."""
    if not c.simulated:
        return [
            "## Evaluation",
            "",
            "No simulator (`--env robot`): the policies are measured by what the robots did with "
            "them — the deployment table below (round r deployed the policy of round r − 1)."
            + (
                " The baselines are trained, not deployed: serve one to the robots with "
                "`anyskill serve RUN --policy-name filtered` (or bc)."
                if c.baselines
                else ""
            ),
            "",
            "![success and throughput of each round's deployment](rounds.png)",
            "",
        ]
    return [
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
    ]


def diagnosis_section(paths: RunPaths, rows: list[dict], rnd: int) -> list[str]:
    """``--diagnose``: per round, how much action information the labels carry, and what that
    says about the methods' results (empty without diagnoses)."""
    from anyskill.algos.recap.diagnostics import LabelPredictability, reading

    found = [rundir.read_json(paths.diagnosis(r)) for r in range(1, rnd + 1)
             if paths.diagnosis(r).exists()]  # fmt: skip
    if not found:
        return []
    lines = [
        "## What the labels carry (the diagnostic behind these results)",
        "",
        "Held-out ROC AUC of each round's advantage label from (state, action chunk) and from "
        "the state alone (4-fold by episode; `anyskill diagnose labels RUN --round N`); the gap "
        "is the action information in the labels, the episode share how much of the label only "
        "says which episode a frame came from.",
        "",
        "| round | AUC (state, chunk) | AUC (state) | gap | episode share | frames |",
        "|---|---|---|---|---|---|",
    ]
    for d in found:
        lines.append(
            f"| {d['round']} | {d['auc_state_chunk']:.3f} | {d['auc_state']:.3f} | "
            f"{d['auc_gap']:+.3f} | {_fmt(d['episode_variance_share'])} | {d['frames']} |"
        )
    last = found[-1]
    fields = {f.name for f in dataclasses.fields(LabelPredictability)}

    def value(v):  # JSON keeps NaN as null
        if isinstance(v, list):
            return tuple(float("nan") if x is None else x for x in v)
        return float("nan") if v is None else v

    p = LabelPredictability(**{k: value(v) for k, v in last.items() if k in fields})
    lines += ["", "Round " + str(last["round"]) + ": " + reading(p)]
    src = last.get("sources")
    if src:
        has_w = "effective_sample_fraction" in src
        lines += [
            "",
            f"Where round {last['round']}'s positive labels"
            + (" and AWR's weights" if has_w else "")
            + " fall, by frame source:",
            "",
            "| source | share of frames | labelled positive |"
            + (" share of AWR weight |" if has_w else ""),
            "|---|---|---|" + ("---|" if has_w else ""),
        ]
        names = {
            "demonstration": "demonstrations",
            "corrected": "corrected frames",
            "success": "successful episodes (own frames)",
            "failure": "failed episodes (own frames)",
        }
        for k, name in names.items():
            r = src[k]
            weight = f" {r['weight']:.2f} |" if has_w else ""
            lines.append(f"| {name} | {r['frames']:.2f} | {_fmt(r['positive'])} |{weight}")
        if has_w:
            lines += [
                "",
                (
                    "AWR trains on demonstrations and successful episodes only "
                    "(--awr-data successes); "
                    if last.get("awr_data") == "successes"
                    else ""
                )
                + f"AWR's weights have an effective sample size of "
                f"{src['effective_sample_fraction']:.0%} of the frames, "
                f"{src['demonstration']['weight'] + src['success']['weight']:.0%} of the weight "
                "on demonstrations and successful episodes: its loss rests on their frames with "
                "the largest advantages (a sharper filter than filtered BC's).",
            ]
    final = {r["method"]: r for r in rows if r["round"] == rnd and "throughput_per_h" in r}
    if "recap" in final and "awr" in final:
        recap, awr = final["recap"]["throughput_per_h"], final["awr"]["throughput_per_h"]
        lines += [
            "",
            f"RECAP ({recap:.0f}/h in round {rnd}) is told only the *sign* of each frame's "
            f"advantage, as the label above; AWR ({awr:.0f}/h) weights the same advantages by "
            "their size. "
            + (
                "AWR is ahead: the advantages' size carries information that the binary label "
                f"(predicted with AUC {p.auc_state_chunk:.2f} from state and chunk) passes on "
                "to the policy only weakly."
                if awr > recap
                else "RECAP is ahead here: the label's sign is enough for this data."
            ),
        ]
    return lines + [""]


def write_report(run_dir: Path) -> Path:
    """Write ``RUN/report.md`` (and its plots) and ``RUN/results.json`` from the artifacts of
    the run in ``run_dir`` so far (its last evaluated round)."""
    paths = RunPaths(Path(run_dir))
    d = paths.root
    c = rundir.load_config(FlywheelConfig, paths.config)
    st = FlywheelState.read(paths.state)
    rows = list(st.rows)
    if not rows:
        raise ValueError(f"{paths.state}: no evaluation yet; nothing to report")
    plot_rounds(rows, d / "rounds.png", deployments=not c.simulated)
    rnd = max(r["round"] for r in rows)
    values = Advantages.load(paths.advantage(rnd)).values
    from anyskill.data.reader import Dataset

    ds = Dataset.open(paths.data)
    ep = ds.episodes
    tag = ep.policy_version == policy_version(rnd, c.deploy_with)
    per_ep = [values[s:t] for s, t in zip(ep.start[tag], ep.stop[tag], strict=True)]
    plot_values(per_ep, ep.success[tag] > 0, d / "values.png")
    videos = []
    if paths.videos.exists():
        recorded = rundir.read_json(paths.videos)
        if recorded.get("round") == rnd:  # recorded after this round's evaluation
            videos = [(d / v["file"], v["caption"]) for v in recorded["videos"]]
    value_meta = checkpoint.load_meta(paths.value)
    parts = [
        f"# anyskill flywheel report: {c.env}",
        "",
        f"{rnd} of {c.rounds} rounds; policy `{c.model.arch}`; {c.demos} demonstrations, "
        f"{c.episodes_per_round} deployed episodes per round (corrector: {c.corrector.kind}, "
        f"trigger {c.corrector.trigger}, watching {c.corrector.fraction:.0%} of envs); "
        f"{c.policy_steps} fine-tuning steps per round per method; advantages "
        + {
            "nstep": f"n-step (n = {c.advantage_n})",
            "chunk": "Q(s, chunk) − V(s)",
            "chunk-nstep": f"Q(s, chunk) − V(s), Q from {c.advantage_n}-step backups",
        }[c.advantage]
        + f", {c.positive_fraction:.0%} positive per task family, indicator "
        f"as {c.indicator}, dropout {c.indicator_dropout:.0%}, guidance β = {c.beta}. "
        + (
            f"AWR: the flow loss weighted per frame by min(exp(A / {c.awr_beta}), "
            f"{c.awr_max_weight}), mean 1 over each batch. "
            if c.awr_beta is not None
            else ""
        )
        + f"Data: {ds.num_episodes} episodes, {ds.num_frames} frames in `{paths.data}`.",
        "",
        *_evaluation(c, rows),
        "## Deployment (the data each round collected)",
        "",
        deployment_table(rows, c.deploy_with),
        "",
        "## Value function",
        "",
        f"Distributional over 201 bins, last training loss {value_meta.get('loss', float('nan')):.3f}. "
        "Early failure detection, held out: the previous round's value function on this "
        "round's uncorrected rollouts, which it was not trained on (an episode is flagged when "
        "its predicted value first drops below the threshold; lead = steps from the flag to "
        "the episode's end; from round 2 on):",
        "",
        detection_table(list(st.detection)) if st.detection else "(none yet)",
        "",
        "![predicted value along episodes](values.png)",
        "",
        *diagnosis_section(paths, rows, rnd),
    ]
    if videos:
        parts += ["## Rollouts", ""]
        for v, caption in videos:
            parts += [f"![{v.stem}]({v.name})", "", caption + ".", ""]
    checkpoint.atomic_write_bytes(paths.report, "\n".join(parts).encode())
    checkpoint.atomic_write_bytes(d / "results.json", json.dumps(st.to_json(), indent=1).encode())
    return paths.report
