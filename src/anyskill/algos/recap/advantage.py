"""Value targets, n-step advantages, per-task thresholds and the advantage indicator (RECAP).

Conventions (π*0.6): every step costs ``-1/horizon``; a successful episode of ``T`` frames
reaches success on its last frame, so frame ``t`` has value ``-(T - t)/horizon``; a failed
episode's frames all have value ``-1`` (the worst bin). Values live in ``[-1, 0]``.
"""

from __future__ import annotations

import numpy as np

# the indicator's words belong to the policy protocol (a served RECAP policy appends them);
# re-exported here for the flywheel and the training data
from anyskill.policies.base import INDICATOR_TEXT, prompt_with_indicator  # noqa: F401

NUM_BINS = 201


def _per_frame(episode_start, episode_stop, values):
    n = int(np.max(episode_stop)) if len(episode_stop) else 0
    out = np.zeros(n, np.asarray(values).dtype)
    for s, t, v in zip(episode_start, episode_stop, values, strict=True):
        out[s:t] = v
    return out


def _check_labels(success):
    success = np.asarray(success)
    unknown = np.flatnonzero(success < 0)
    if len(unknown):
        raise ValueError(
            f"episodes {unknown[:10].tolist()} have no success label (-1); label them first "
            "(`anyskill label DATASET`)"
        )
    return success > 0


def value_targets(episode_start, episode_stop, success, horizon) -> np.ndarray:
    """Monte-Carlo value of every frame: ``-(T - t)/horizon`` (clipped to ``[-1, 0]``) in a
    successful episode of ``T`` frames, ``-1`` everywhere in a failed one."""
    start, stop = np.asarray(episode_start), np.asarray(episode_stop)
    ok = _check_labels(success)
    hor = np.broadcast_to(np.asarray(horizon, np.float64), start.shape)
    n = int(stop.max()) if len(stop) else 0
    out = np.full(n, -1.0, np.float32)
    for s, t, good, h in zip(start, stop, ok, hor, strict=True):
        if good:
            steps_left = t - np.arange(s, t)  # T - t_local
            out[s:t] = np.clip(-steps_left / h, -1.0, 0.0)
    return out


def bin_centers(num_bins: int = NUM_BINS) -> np.ndarray:
    """Bin ``0`` is ``-1`` (failure), bin ``num_bins - 1`` is ``0`` (success now)."""
    return np.linspace(-1.0, 0.0, num_bins)


def to_bins(values, num_bins: int = NUM_BINS) -> np.ndarray:
    """Index of the nearest bin centre of each value in ``[-1, 0]``."""
    v = np.clip(np.asarray(values, np.float64), -1.0, 0.0)
    return np.rint((v + 1.0) * (num_bins - 1)).astype(np.int32)


def nstep_targets(values, episode_start, episode_stop, success, horizon, n: int) -> np.ndarray:
    """n-step backed-up returns ``sum_{k<m} r_{t+k} + V_boot`` of every frame, ``r =
    -1/horizon``, ``m = min(n, T - t)``: ``V_boot = V(s_{t+n})`` (the predictions ``values``)
    when ``t + n < T``, else the episode's terminal value (``0`` success, ``-1`` failure). The
    targets of a chunk critic ``Q(s_t, chunk_t)`` with n-step backups (float64)."""
    v = np.asarray(values, np.float64)
    ok = _check_labels(success)
    hor = np.broadcast_to(np.asarray(horizon, np.float64), np.asarray(episode_start).shape)
    out = np.zeros(len(v), np.float64)
    for s, t, good, h in zip(episode_start, episode_stop, ok, hor, strict=True):
        idx = np.arange(s, t)
        m = np.minimum(n, t - idx)
        inside = idx + n < t
        terminal = 0.0 if good else -1.0
        boot = np.where(inside, v[np.minimum(idx + n, t - 1)], terminal)
        out[s:t] = -m / h + boot
    return out


def nstep_advantages(values, episode_start, episode_stop, success, horizon, n: int):
    """``A_t = sum_{k<m} r_{t+k} + V_boot - V(s_t)`` (:func:`nstep_targets` minus the value).

    With ``values`` equal to :func:`value_targets`, a successful episode's advantages are all
    ``0`` and a failed episode's are ``-m/horizon <= 0`` (after the step costs, the bootstrap
    -1 equals V)."""
    v = np.asarray(values, np.float64)
    targets = nstep_targets(v, episode_start, episode_stop, success, horizon, n)
    return (targets - v).astype(np.float32)


def center_per_episode(advantages, episode_start, episode_stop) -> np.ndarray:
    """Each episode's advantages minus their mean over that episode.

    What is left says which of an episode's actions did better than its others, not which
    episode did better: without it, the frames of a successful episode tend to be positive
    all together, and at the same state a label mostly tells the episode apart, not the
    action (the per-family threshold is then taken over the centred values)."""
    a = np.asarray(advantages, np.float32)
    out = np.empty_like(a)
    for s, t in zip(episode_start, episode_stop, strict=True):
        out[s:t] = a[s:t] - a[s:t].mean() if t > s else a[s:t]
    return out


def before_takeovers(episode_start, episode_stop, intervention, window: int) -> np.ndarray:
    """``[N]`` bool: the up to ``window`` autonomous frames before each takeover (the start of
    a run of ``intervention`` frames), within the episode and after any earlier takeover —
    the segment a person judged to be heading for failure (the human-in-the-loop split:
    those frames are scored as that failure, the takeover frames themselves as positive)."""
    if window < 0:
        raise ValueError(f"takeover window must be >= 0 frames, got {window}")
    iv = np.asarray(intervention, bool)
    out = np.zeros(len(iv), bool)
    if window == 0:
        return out
    for s, t in zip(episode_start, episode_stop, strict=True):
        floor = s  # frames before this belong to an earlier takeover or another episode
        for k in range(s, t):
            if iv[k] and (k == s or not iv[k - 1]):  # a takeover starts at k
                out[max(floor, k - window) : k] = True
            if iv[k]:
                floor = k + 1
    return out


def positive_threshold(advantages, task_ids, fraction: float = 0.3) -> dict[int, float]:
    """Per task id, the advantage at or above which ``fraction`` of its frames lie."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    a, ids = np.asarray(advantages), np.asarray(task_ids)
    return {int(k): float(np.quantile(a[ids == k], 1.0 - fraction)) for k in np.unique(ids)}


def indicator(advantages, task_ids, thresholds: dict, intervention=None) -> np.ndarray:
    """``True`` (positive) where ``A >= `` the task's threshold, or on corrected frames."""
    a, ids = np.asarray(advantages), np.asarray(task_ids)
    thr = np.array([thresholds[int(k)] for k in ids]) if len(ids) else np.zeros(0)
    pos = a >= thr
    if intervention is not None:
        pos |= np.asarray(intervention, bool)
    return pos


def drop_indicator(rng: np.random.Generator, n: int, p: float = 0.3) -> np.ndarray:
    """``True`` where the indicator is dropped (the sample trains the unconditioned policy)."""
    return rng.random(n) < p


def failure_detection(values_per_episode, success, threshold: float) -> dict:
    """Flag an episode when its predicted value first drops below ``threshold``: precision and
    recall over failed episodes, and the mean lead (steps from the flag to the episode's end)
    over correctly flagged failures."""
    success = np.asarray(success, bool)
    flags, leads = [], []
    for v, ok in zip(values_per_episode, success, strict=True):
        below = np.flatnonzero(np.asarray(v) < threshold)
        flagged = len(below) > 0
        flags.append(flagged)
        if flagged and not ok:
            leads.append(len(v) - int(below[0]))
    flags = np.array(flags, bool)
    tp = int(np.sum(flags & ~success))
    return {
        "threshold": float(threshold),
        "precision": tp / int(flags.sum()) if flags.any() else None,
        "recall": tp / int((~success).sum()) if (~success).any() else None,
        "mean_lead_steps": float(np.mean(leads)) if leads else None,
        "flagged": int(flags.sum()),
    }


def sweep_failure_detection(values_per_episode, success, thresholds=(-0.95, -0.9, -0.8, -0.7)):
    return [failure_detection(values_per_episode, success, t) for t in thresholds]
