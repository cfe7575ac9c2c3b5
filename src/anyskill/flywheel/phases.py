"""The phases of a flywheel round, in order (:data:`PHASES`), each a function
``phase(ctx, state) -> state`` that reads and writes the run's artifacts (see
:mod:`anyskill.flywheel.artifacts`) atomically.

Every phase is idempotent: a kill after a phase's artifact was written but before
``state.json`` recorded the phase must not redo the work in a way that changes results —
collect counts the episodes the round already stored, the value function and the policies
carry the round they were trained in (a finished one is not trained again; the held-out
detection only ever uses the previous round's value function, on episodes it never saw),
advantages, evaluation and the report are recomputed from the same inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from anyskill import checkpoint, rundir
from anyskill.algos.recap import advantage as A
from anyskill.algos.recap import recap as R
from anyskill.algos.recap.variety import varied
from anyskill.data.reader import Dataset
from anyskill.data.writer import EpisodeWriter
from anyskill.flywheel.artifacts import LABELS, FlywheelState, methods, policy_version
from anyskill.flywheel.context import RunContext, log

Phase = Callable[[RunContext, FlywheelState], FlywheelState]


class NeedsLabels(RuntimeError):
    """Raised when ``--labels human`` episodes are waiting for ``anyskill label``."""


def _bar(ctx: RunContext, steps: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, disable=not ctx.cfg.progress, leave=False)


def _spans(ds: Dataset) -> R.EpisodeSpans:
    ep = ds.episodes
    return R.EpisodeSpans(ep.start, ep.stop, ep.success)


# ---- 1. collect --------------------------------------------------------------------------------


def collect(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Deploy the current RECAP policy (``--deploy-with``; round 1: the starting policy) on
    ``episodes_per_round`` envs with the corrector on call; store every episode with its
    source, ``policy_version``, per-frame interventions and success label (none with
    ``--labels human``). A resumed round continues after the episodes already stored."""
    c, rnd = ctx.cfg, st.round
    tag = policy_version(rnd, c.deploy_with)
    have = int(np.sum(ctx.dataset().episodes.policy_version == tag))
    if have >= c.episodes_per_round:
        return st
    name = c.deploy_with if rnd > 1 else "start"
    if c.deploy == "robots":
        return collect_from_robots(ctx, st, name, have)
    params = ctx.policy_params(name) if rnd > 1 else ctx.start_params
    policy = ctx.deployment.policy(params, recap=name == "recap")
    # --variety: a fraction of the chunks slowed / shifted (evaluation never is)
    policy = varied(policy, c.variety, c.variety_slow, c.variety_noise)
    vp = ctx.value()[0] if c.corrector.trigger == "value" else None
    log(f"round {rnd}: deploying the {LABELS[name]} on {c.episodes_per_round} episodes ...")
    key = jax.random.fold_in(jax.random.key(c.seed), 1000 + rnd)
    writer = EpisodeWriter.open(ctx.paths.data)
    human = c.labels == "human"

    def store(ep, i):
        iv = ep.intervention[i, : int(ep.length[i])]
        writer.add_episode(
            ep.frames(i),
            task=ep.task[i],
            intervention=iv,
            success=None if human else bool(ep.success[i]),
            source="corrected" if iv.any() else "autonomous",
            policy_version=tag,
            episode_info={"round": rnd, "corrected": bool(iv.any())},
        )

    def deploy(**kw):
        n = c.episodes_per_round
        return ctx.deployment.deploy(policy, key, n, c.corrector, f"collect-r{rnd}", vp, **kw)

    with writer:  # releases the dataset's writer lock however the round ends
        if c.corrector.kind == "human" or ctx.env.adapter is not None:
            # one episode at a time (a person's time is precious; a host env runs one):
            # every episode is stored the moment it ends, and a resumed round continues
            # after the episodes already stored
            deploy(skip=have, on_episode=lambda ep: store(ep, 0))
        else:
            ep = deploy()
            for i in range(have, c.episodes_per_round):
                store(ep, i)
    return st


def collect_from_robots(ctx: RunContext, st: FlywheelState, name: str, have: int):
    """``--deploy robots``: serve the round's policy (loaded from the run directory through
    the policy registry, exactly as ``anyskill serve RUN`` would) and store what robots
    upload until the round has its episodes or is ended by command."""
    from anyskill.algos.recap.policy import load_flywheel_policy
    from anyskill.flywheel import robots

    c, rnd = ctx.cfg, st.round
    tag = policy_version(rnd, c.deploy_with)
    policy = load_flywheel_policy(ctx.paths.root, policy_name=name, seed=c.seed + rnd)
    log(f"round {rnd}: serving the {LABELS[name]} to robots for {c.episodes_per_round} episodes")
    result = robots.collect_from_robots(
        policy,
        ctx.paths.data,
        tag,
        c.episodes_per_round,
        have,
        c.robots,
        ctx.paths.root,
        log=log,
        on_listening=ctx.robots_listening,
    )
    log(f"round {rnd}: {result.stored} episodes from robots (ended by {result.reason})")
    if result.stored == 0:
        raise RuntimeError(
            f"round {rnd} ended ({result.reason}) before any robot uploaded an episode; "
            "nothing to learn from — resume with --resume once robots are connected"
        )
    return st


# ---- 2. label ----------------------------------------------------------------------------------


def value_targets(ctx: RunContext, ds: Dataset) -> np.ndarray:
    """Monte-Carlo value targets of every frame; episodes without a success label (``--labels
    human``) pause the run until ``anyskill label`` has labelled them."""
    ep = ds.episodes
    unknown = np.flatnonzero(ep.success < 0)
    if len(unknown):
        raise NeedsLabels(
            f"{len(unknown)} episodes of {ctx.paths.data} have no success label; run "
            f"`anyskill label {ctx.paths.data}` and then resume with --resume"
        )
    return A.value_targets(ep.start, ep.stop, ep.success, ctx.horizon)


def label(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Wait for labels: every stored episode must have its success label."""
    value_targets(ctx, ctx.dataset())
    return st


# ---- 3. value ----------------------------------------------------------------------------------


def value(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Train the distributional value function on everything collected so far (pretrained
    from the policy's encoder in round 1, fine-tuned after); before fine-tuning, score the
    previous round's function on this round's rollouts (held-out failure detection)."""
    c, rnd = ctx.cfg, st.round
    ds = ctx.dataset()
    prev, prev_meta = ctx.value()
    if prev is not None and prev_meta.get("round") == rnd:
        # killed after value.msgpack was written but before state.json said so: this
        # round's value function is complete. Training again would fine-tune it twice, and
        # the held-out detection would use a function that has seen these episodes.
        log(f"round {rnd}: the value function of this round is already trained")
        return st
    data = ctx.training_data(c.seed + 100 * rnd)
    if prev is not None:
        held_out_detection(ctx, rnd, prev, data, prev_meta)
    params, losses = train_value(ctx, ds, data, prev, rnd, f"round {rnd}: ")
    meta = {
        "round": rnd,
        "loss": float(losses[-50:].mean()),
        "trained_on_episodes": int(ds.num_episodes),
    }
    checkpoint.save(ctx.paths.value, params, meta)
    return st


def train_value(ctx: RunContext, ds: Dataset, data, prev, seed: int, say: str = ""):
    """The value function trained on ``ds`` (``data``: its batches): pretrained from the
    policy's encoder when ``prev`` is None (``--value.steps``), else ``prev`` fine-tuned
    (``--value.finetune-steps``); with ``--advantage chunk-nstep`` also ``Q(s, chunk)``.
    ``seed``: the round (or the fleet learner's cycle). Returns ``(params, losses)``."""
    c = ctx.cfg
    targets = value_targets(ctx, ds)
    if prev is None:
        params = ctx.vf.init(jax.random.key(c.seed + 7), ctx.start_params)
        steps = c.value.steps
    else:
        params, steps = prev, c.value.finetune_steps
    log(f"{say}training the value function ({steps} steps, {ds.num_frames} frames)")
    bar = _bar(ctx, steps, "value")
    params, losses = ctx.vf.train(params, data, targets, steps, c.seed + seed, bar.update)
    bar.close()
    if c.advantage == "chunk-nstep":  # Q(s, chunk) and V(s) from n-step backups of the V fit
        ep = ds.episodes
        v = R.predict_values(ctx.vf, params, data)
        q_targets = A.nstep_targets(v, ep.start, ep.stop, ep.success, ctx.horizon, c.advantage_n)
        steps = c.value.finetune_steps
        log(f"{say}fitting Q(s, chunk) to {c.advantage_n}-step backups ({steps} steps)")
        bar = _bar(ctx, steps, "q")
        # V is fitted to the same backups: A = Q - V then differs by the chunk alone (with
        # V on Monte-Carlo returns, A came out high on failed episodes, whose MC value is -1
        # while a backup still sees a way out: benchmarks, "chunk critic")
        params, losses = ctx.vf.train(
            params, data, q_targets, steps, c.seed + 50 + seed, bar.update, q_targets=q_targets
        )
        bar.close()
    return params, losses


def held_out_detection(ctx: RunContext, rnd: int, value_params, data, value_meta: dict) -> None:
    """Early failure detection of the previous round's value function on this round's
    rollouts, which it has never seen (uncorrected episodes only), into
    ``detection-r{rnd}.json``. ``value_meta``: the function's checkpoint metadata; episodes it
    was trained on (``trained_on_episodes``: the store's first n) are never scored, and a
    function of this round is refused."""
    if value_meta.get("round", 0) >= rnd:
        raise RuntimeError(
            f"held-out detection of round {rnd} asked of the value function of round "
            f"{value_meta['round']}, which has seen this round's episodes"
        )
    ds = data.ds
    ep = ds.episodes
    found = R.held_out_failure_detection(
        lambda frames: R.predict_values(ctx.vf, value_params, data, frames=frames),
        _spans(ds),
        np.flatnonzero(ep.policy_version == policy_version(rnd, ctx.cfg.deploy_with)),
        ds.columns["intervention"],
        seen=int(value_meta.get("trained_on_episodes", 0)),
    )
    if found is None:
        return
    out = {
        "round": rnd,
        "episodes": found["episodes"],
        "failures": found["failures"],
        "rows": found["rows"],
        # provenance of the held-out claim: the function's round, the episodes it was
        # trained on ([0, n) of the store) and the episodes scored (all >= n)
        "value_round": value_meta.get("round"),
        "value_trained_on_episodes": value_meta.get("trained_on_episodes"),
        "episode_ids": found["episode_ids"],
    }
    rundir.write_json(ctx.paths.detection(rnd), out)


# ---- 4. advantage ------------------------------------------------------------------------------


def advantage(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Advantages of every frame with this round's value function, the per-family threshold
    marking the best ``positive_fraction`` positive, corrected frames positive."""
    c = ctx.cfg
    ds = ctx.dataset()
    data = ctx.training_data(c.seed)
    vp = ctx.value()[0]
    adv = advantages_of(ctx, ds, data, vp)
    adv.save(ctx.paths.advantage(st.round))
    if c.diagnose:
        diagnose_labels(ctx, st.round, data, adv)
    return st


def advantages_of(ctx: RunContext, ds: Dataset, data, vp) -> R.Advantages:
    """Every frame's advantage under the value function ``vp`` and the indicator (the
    run's --advantage, --positive-fraction, --advantage-center, --split-takeovers)."""
    c = ctx.cfg
    values = R.predict_values(ctx.vf, vp, data)
    chunk = c.advantage in ("chunk", "chunk-nstep")
    q = R.predict_values(ctx.vf, vp, data, q=True) if chunk else None
    return R.recap_advantages(
        values,
        _spans(ds),
        ctx.horizon,
        R.family_ids(ds.tasks, ds.columns["task_index"]),
        ds.columns["intervention"],
        c.positive_fraction,
        kind="chunk" if chunk else "nstep",
        n=c.advantage_n,
        q=q,
        center=c.advantage_center,
        before_takeover=c.split_takeovers,
    )


def diagnose_labels(ctx: RunContext, rnd: int, data, adv: R.Advantages) -> None:
    """What round ``rnd``'s labels carry, into ``diagnosis-r{rnd}.json``: how much action
    information (:func:`anyskill.algos.recap.diagnostics.label_predictability` on every
    labelled frame) and where the positive labels and AWR's weights fall (by frame source)."""
    from anyskill.algos.recap import diagnostics as D

    c = ctx.cfg
    log(f"round {rnd}: diagnosing the labels (held-out AUC from (state, chunk) vs state)")
    n = len(adv.indicator)
    d = D.store_frames(data, adv.indicator, np.arange(n))
    p = D.label_predictability(d.state, d.chunk, d.label, d.episode, c.seed)
    weights = None
    if c.awr_beta is not None:
        weights = R.awr_weights(adv.advantages, c.awr_beta, c.awr_max_weight)
        if c.awr_data == "successes":  # AWR never samples the other episodes' frames
            ep = data.ds.episodes
            kept = np.zeros(n, bool)
            for s, t, ok in zip(ep.start, ep.stop, ep.success, strict=True):
                kept[min(s, n) : min(t, n)] = ok == 1
            weights = np.where(kept, weights, 0.0)
    sources = D.label_sources(adv.indicator, D.frame_sources(data.ds, n), weights)
    rundir.write_json(
        ctx.paths.diagnosis(rnd),
        {"round": rnd, **p.to_json(), "sources": sources, "awr_data": c.awr_data},
    )


# ---- 5. policy ---------------------------------------------------------------------------------


def policy(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Fine-tune RECAP on all data with the advantage indicator (dropped
    ``indicator_dropout`` of the time), as a learned input or as words of the prompt; the
    baselines (behaviour cloning on all data, filtered BC on successful episodes, AWR: all
    data, the flow loss weighted by ``min(exp(A / awr_beta), awr_max_weight)``) from their
    previous round on the same data. A method already trained this round is skipped."""
    c, rnd = ctx.cfg, st.round
    labels = R.Advantages.load(ctx.paths.advantage(rnd))
    for i, name in enumerate(methods(c)):
        p = ctx.paths.policy(name)
        if p.exists() and checkpoint.load_meta(p).get("round") == rnd:
            continue
        seed = c.seed + 10 * rnd + i
        if name == "filtered" and not (ctx.dataset().episodes.success > 0).any():
            # e.g. PushT, whose 95 % coverage even its scripted expert rarely reaches
            log(f"round {rnd}: no successful episode yet; filtered BC keeps its weights")
            ctx.save_policy(name, ctx.policy_params(name), rnd)
            continue
        log(f"round {rnd}: fine-tuning {LABELS[name]} ({c.policy_steps} steps)")
        params = finetune(ctx, name, ctx.policy_params(name), labels, c.policy_steps, seed)
        ctx.save_policy(name, params, rnd)
    return st


def finetune(ctx: RunContext, name: str, params, labels: R.Advantages, steps: int, seed: int):
    """Method ``name``'s weights ``params`` fine-tuned ``steps`` steps on the store: filtered
    BC on successful episodes only; RECAP with ``labels``' indicator; AWR weighted by
    ``labels``' advantages (on successful episodes only with ``--awr-data successes``); BC
    on everything."""
    c = ctx.cfg
    successes = name == "filtered" or (name == "awr" and c.awr_data == "successes")
    data = ctx.training_data(seed, success=True) if successes else ctx.training_data(seed)
    if name == "recap":
        data.set_indicator(
            labels.indicator,
            A.prompt_with_indicator if c.indicator == "prompt" else None,
            lambda rng, n: A.drop_indicator(rng, n, c.indicator_dropout),
            negatives_unconditioned=c.negatives_unconditioned,
        )
    weights = None
    if name == "awr":
        weights = R.awr_weights(labels.advantages, c.awr_beta, c.awr_max_weight)
    bar = _bar(ctx, steps, name)
    params = R.finetune_policy(
        ctx.model, params, data, steps, c.lr, seed, bar.update, weights=weights
    )
    bar.close()
    return params


# ---- 6. evaluate -------------------------------------------------------------------------------


def outcome_metrics(success: np.ndarray, steps: np.ndarray, control_hz: float) -> dict:
    """Success and failure rate, mean and median time to success (s; among successes),
    throughput (successes per hour of robot time: episodes end at success, failures run to
    the time limit)."""
    success = np.asarray(success, bool)
    robot_hours = float(np.sum(steps)) / control_hz / 3600.0
    return {
        "success": float(success.mean()),
        "failure": float(1.0 - success.mean()),
        "time_to_success_s": float(steps[success].mean() / control_hz) if success.any() else None,
        "median_time_to_success_s": (
            float(np.median(steps[success]) / control_hz) if success.any() else None
        ),
        "throughput_per_h": float(success.sum() / max(robot_hours, 1e-9)),
        "episodes": int(len(success)),
    }


def evaluation_episodes(c, rnd: int) -> tuple[jax.Array, str]:
    """The key and purpose (an adapter env's reset seeds) of round ``rnd``'s evaluation: the
    same for every round with ``--eval-same-episodes``, else new ones each round."""
    k = 5000 if c.eval_same_episodes else 5000 + rnd
    purpose = "evaluate" if c.eval_same_episodes else f"evaluate-r{rnd}"
    return jax.random.fold_in(jax.random.key(c.seed), k), purpose


def assisted(ctx: RunContext, params, recap: bool, rnd: int, value_params=None) -> dict:
    """How much help a policy needs: deployed as in data collection (the scripted corrector
    watching the same fraction of envs, same trigger), on episodes that are the same for
    every method of a round — intervention rate (frames under correction), episodes
    corrected and success with corrections. Empty unless ``--eval-interventions`` and an
    expert corrector (a person is not asked to correct evaluation runs). ``value_params``:
    the value function, needed by ``--corrector.trigger value``."""
    c = ctx.cfg
    if not c.eval_interventions or c.corrector.kind != "expert":
        return {}
    key = jax.random.fold_in(jax.random.key(c.seed), 6000 + rnd)
    policy = ctx.deployment.policy(params, recap)
    ep = ctx.deployment.deploy(
        policy, key, c.eval_episodes, c.corrector, f"assisted-r{rnd}", value_params
    )
    live = np.arange(ep.intervention.shape[1])[None] < ep.length[:, None]
    return {
        "intervention_rate": float(ep.intervention[live].mean()),
        "corrected_episodes": float(ep.intervention.any(1).mean()),
        "assisted_success": float(np.mean(ep.success)),
    }


def evaluate(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """Every policy without a corrector (success, failure rate, time to success,
    throughput), with the corrector on call (:func:`assisted`), the round's deployment, and
    the held-out detection; rollout videos of the starting and final policies after the
    last round (``--videos``, on envs with a camera). ``--env robot`` (no simulator): the
    round's deployment on the robots only."""
    c, rnd = ctx.cfg, st.round
    hz = ctx.env.control_hz
    rows = []
    vp = ctx.value()[0] if c.corrector.trigger == "value" else None

    def run(name, params, recap):
        key, purpose = evaluation_episodes(c, rnd)
        policy = ctx.deployment.policy(params, recap)
        ep = ctx.deployment.evaluate(policy, key, c.eval_episodes, purpose)
        row = {"round": rnd, "method": name, **outcome_metrics(ep.success, ep.length, hz)}
        return {**row, **assisted(ctx, params, recap, rnd, vp)}

    if c.simulated:  # --env robot: no simulator; the robots' deployments are the measure
        if rnd == 1 and not any(r["method"] == "start" for r in st.rows):
            rows.append({**run("start", ctx.start_params, False), "round": 0})
        for name in methods(c):
            rows.append(run(name, ctx.policy_params(name), name == "recap"))
    ds = ctx.dataset()
    ep = ds.episodes
    tag = ep.policy_version == policy_version(rnd, c.deploy_with)
    iv = np.asarray(ds.columns["intervention"], bool)
    spans = list(zip(ep.start[tag], ep.stop[tag], strict=True))
    rows.append(
        {
            "round": rnd,
            "method": "deployment" if rnd > 1 else "deployment (start)",
            "intervention_rate": float(np.mean(np.concatenate([iv[s:t] for s, t in spans]))),
            "corrected_episodes": float(np.mean([iv[s:t].any() for s, t in spans])),
            **outcome_metrics(ep.success[tag] > 0, ep.length[tag], hz),
        }
    )
    det = ctx.paths.detection(rnd)
    detection = (rundir.read_json(det),) if det.exists() else ()
    for r in rows:
        if "success" in r:
            log(
                f"round {r['round']} {r['method']:<20} success {r['success']:.2f} "
                f"throughput {r['throughput_per_h']:.0f}/h"
            )
    if c.videos and rnd == c.rounds:
        if ctx.env.has_camera:
            record_videos(ctx, rnd)
        else:
            why = "no simulator (--env robot)" if not c.simulated else f"{c.env} has no camera"
            log(f"no rollout videos: {why} to draw them")
    return dataclasses.replace(st, rows=st.rows + tuple(rows), detection=st.detection + detection)


def record_videos(ctx: RunContext, rnd: int) -> None:
    """``rollouts-start.gif`` and ``rollouts-NAME.gif`` of the deployed method
    (``--deploy-with``), their captions in ``videos.json``."""
    videos = []
    for name in ("start", ctx.cfg.deploy_with):
        params = ctx.start_params if name == "start" else ctx.policy_params(name)
        path = ctx.paths.video(name)
        policy = ctx.deployment.policy(params, name == "recap")
        caption = ctx.deployment.rollout_video(policy, path)
        videos.append({"name": name, "file": path.name, "caption": caption})
    rundir.write_json(ctx.paths.videos, {"round": rnd, "videos": videos})


# ---- 7. report ---------------------------------------------------------------------------------


def report(ctx: RunContext, st: FlywheelState) -> FlywheelState:
    """``RUN/report.md`` with the tables, plots and videos so far (from the artifacts)."""
    from anyskill.flywheel.report import write_report

    write_report(ctx.paths.root)
    return st


#: the phases of a round, in the order they run (``state.json``'s ``done`` names them)
PHASES: dict[str, Phase] = {
    "collect": collect,
    "label": label,
    "value": value,
    "advantage": advantage,
    "policy": policy,
    "evaluate": evaluate,
    "report": report,
}
