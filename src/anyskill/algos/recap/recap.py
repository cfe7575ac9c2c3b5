"""RECAP's steps as functions of typed inputs (π*0.6, "RL with Experience and Corrections via
Advantage-conditioned Policies"): value predictions over a dataset, advantages with the
per-family threshold and indicator, held-out failure detection and the policy fine-tuning.

Nothing here knows where a run keeps its files: the flywheel (:mod:`anyskill.flywheel`)
decides which data, which value function and which round; these functions compute.
The value function itself (``init``, ``expected``, ``train``) is
:class:`~anyskill.algos.recap.value.ValueFunction`; the per-frame equations are in
:mod:`~anyskill.algos.recap.advantage`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.recap import advantage as A
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.config import TrainConfig
from anyskill.algos.vla.data import TrainingData
from anyskill.algos.vla.model import PolicyModel
from anyskill.algos.vla.train import TrainState, make_optimizer, make_train_step
from anyskill.learn import fit

# ---- value predictions ---------------------------------------------------------------------

#: jitted ``expected`` per (value function, with chunk): compiled once per process
_predictors: dict = {}


def predict_values(
    vf: ValueFunction,
    value_params: Any,
    data: TrainingData,
    frames: np.ndarray | None = None,
    batch: int = 1024,
    q: bool = False,
) -> np.ndarray:
    """``V(s)`` ``[len(frames)]`` float32 of ``frames`` (default: every frame of
    ``data.ds``) in fixed-size batches (one compiled shape; the last batch is padded with
    its final frame); with ``q``, ``Q(s, chunk)`` with the action chunk that followed each
    frame in its episode."""
    frames = np.arange(data.ds.num_frames) if frames is None else np.asarray(frames)
    if (vf, q) not in _predictors:
        _predictors[(vf, q)] = jax.jit((lambda p, o, a: vf.expected(p, o, a)) if q else vf.expected)
    fn = _predictors[(vf, q)]
    out = np.zeros(len(frames), np.float32)
    for s in range(0, len(frames), batch):
        idx = frames[s : s + batch]
        full = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
        args = (data.obs_at(full),) + ((data.chunk_at(full),) if q else ())
        out[s : s + len(idx)] = np.asarray(fn(value_params, *args))[: len(idx)]
    return out


# ---- advantages and the indicator ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpisodeSpans:
    """Where each episode lies in the per-frame arrays and how it ended (``[E]`` each)."""

    start: np.ndarray
    """First frame of each episode."""
    stop: np.ndarray
    """One past the last frame."""
    success: np.ndarray
    """1 success, 0 failure (-1, unlabelled, is refused by the value targets)."""


@dataclasses.dataclass(frozen=True)
class Advantages:
    """Per-frame RECAP labels of a dataset (``[N]`` each, in the store's frame order)."""

    values: np.ndarray
    """``V(s_t)`` float32."""
    advantages: np.ndarray
    """``A_t`` float32 (n-step, or ``Q(s_t, chunk) - V(s_t)``)."""
    indicator: np.ndarray
    """bool: "advantage: positive" (above the family's threshold, or a corrected frame)."""
    family: np.ndarray
    """int: task family of the frame (the threshold is per family)."""
    q: np.ndarray | None = None
    """``Q(s_t, chunk)`` float32 with chunk advantages, else None."""

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (keys: the field names; ``q`` only when present) atomically."""
        path = Path(path)
        extra = {} if self.q is None else {"q": self.q}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            values=self.values,
            advantages=self.advantages,
            indicator=self.indicator,
            family=self.family,
            **extra,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Advantages:
        with np.load(path) as f:
            missing = {"values", "advantages", "indicator", "family"} - set(f.files)
            if missing:
                raise ValueError(
                    f"{path}: not an advantage file (no {sorted(missing)}; has {f.files}); "
                    "delete it so the advantage phase writes it again"
                )
            return cls(**{k: f[k] for k in f.files})


def recap_advantages(
    values: np.ndarray,
    episodes: EpisodeSpans,
    horizon: int,
    family: np.ndarray,
    intervention: np.ndarray,
    positive_fraction: float,
    kind: Literal["nstep", "chunk"] = "nstep",
    n: int = 10,
    q: np.ndarray | None = None,
    center: bool = False,
    before_takeover: int = 0,
) -> Advantages:
    """Advantages of every frame and the indicator: ``kind="nstep"``, ``A_t = sum of n step
    costs + V(s_{t+n}) - V(s_t)`` (π*0.6, Sec. IV-B); ``"chunk"``, ``A_t = Q(s_t, chunk) -
    V(s_t)`` (needs ``q``). The best ``positive_fraction`` of each task family's frames
    are marked positive, and so is every corrected frame (``intervention``). ``center``:
    advantages are first centred within each episode
    (:func:`~anyskill.algos.recap.advantage.center_per_episode`; the stored ``advantages``
    are the centred ones, the values thresholded). ``before_takeover``: the human-in-the-loop
    split — the up to that many autonomous frames before each takeover
    (:func:`~anyskill.algos.recap.advantage.before_takeovers`) are scored as the failure they
    were heading to: negative, with the lowest advantage of the store."""
    if kind == "chunk":
        if q is None:
            raise ValueError("chunk advantages need q = Q(s, chunk) of every frame")
        adv = (q - values).astype(np.float32)
    elif kind == "nstep":
        e = episodes
        adv = A.nstep_advantages(values, e.start, e.stop, e.success, horizon, n)
    else:
        raise ValueError(f"advantage kind must be 'nstep' or 'chunk', got {kind!r}")
    if center:
        adv = A.center_per_episode(adv, episodes.start, episodes.stop)
    thr = A.positive_threshold(adv, family, positive_fraction)
    ind = A.indicator(adv, family, thr, np.asarray(intervention, bool))
    if before_takeover:
        heading = A.before_takeovers(episodes.start, episodes.stop, intervention, before_takeover)
        adv = np.where(heading, adv.min(), adv).astype(np.float32)
        ind = ind & ~heading
    return Advantages(values, adv, ind, family, q if kind == "chunk" else None)


def family_ids(tasks: list[str], task_index: np.ndarray) -> np.ndarray:
    """Per-frame group of the advantage threshold: ``tasks`` the store's instructions,
    ``task_index`` ``[N]`` each frame's instruction. A tabletop instruction's group is its
    task family (index into ``tasks.FAMILIES``: the threshold compares frames of tasks of one
    kind, whatever their objects and phrasing); any other instruction (an adapter env's,
    e.g. gym-pusht's) is a group of its own, ``len(FAMILIES) + its index in tasks``."""
    from anyskill.envs.tabletop import tasks as T

    rows, _ = T.task_table(T.FAMILIES, "all")
    fam_of_text = {T.instruction(r): int(r[T.FAMILY]) for r in rows}
    own = len(T.FAMILIES)
    fam_of_task = np.array([fam_of_text.get(t, own + i) for i, t in enumerate(tasks)] or [0])
    return fam_of_task[np.maximum(np.asarray(task_index), 0)]


# ---- early failure detection -----------------------------------------------------------------


def held_out_failure_detection(
    values_of: Callable[[np.ndarray], np.ndarray],
    episodes: EpisodeSpans,
    candidates: np.ndarray,
    intervention: np.ndarray,
    seen: int,
) -> dict | None:
    """How early a value function sees failures coming, on episodes it was not trained on.

    ``candidates``: episode ids to score (e.g. one round's rollouts); ids below ``seen`` (the
    function was trained on episodes ``[0, seen)``) and corrected episodes are left out.
    ``values_of(frames)`` predicts ``V`` of frame indices. Returns ``{episodes, failures,
    rows, episode_ids}`` (``rows``: :func:`~anyskill.algos.recap.advantage.sweep_failure_detection`)
    or None when no episode is left."""
    iv = np.asarray(intervention, bool)
    e = episodes
    tag = [int(i) for i in candidates if i >= seen and not iv[e.start[i] : e.stop[i]].any()]
    if not tag:
        return None
    idx = np.concatenate([np.arange(e.start[i], e.stop[i]) for i in tag])
    values = values_of(idx)
    length = np.asarray(e.stop)[tag] - np.asarray(e.start)[tag]
    per_ep = np.split(values, np.cumsum(length)[:-1])
    ok = np.asarray(e.success)[tag] > 0
    return {
        "episodes": len(tag),
        "failures": int((~ok).sum()),
        "rows": A.sweep_failure_detection(per_ep, ok),
        "episode_ids": tag,
    }


# ---- the policy --------------------------------------------------------------------------------

#: (optimizer, jitted step) per (model, steps, lr): compiled once per process
_policy_steps: dict = {}


def awr_weights(advantages: np.ndarray, beta: float, max_weight: float) -> np.ndarray:
    """Advantage-weighted regression's per-frame weights ``w = min(exp(A / beta), w_max)``
    (Peng et al. 2019, "Advantage-Weighted Regression", Sec. 3) ``[N]`` float32. The
    exponent is clipped at ``log w_max`` first, so a large ``A / beta`` never overflows."""
    if not beta > 0 or not max_weight > 0:
        raise ValueError(f"AWR needs beta > 0 and max_weight > 0, got {beta} and {max_weight}")
    a = np.asarray(advantages, np.float64) / beta
    return np.exp(np.minimum(a, np.log(max_weight))).astype(np.float32)


def finetune_policy(
    model: PolicyModel,
    params: Any,
    data: TrainingData,
    steps: int,
    lr: float,
    seed: int,
    progress: Callable[[int], Any] | None = None,
    weights: np.ndarray | None = None,
) -> Any:
    """Fine-tune ``params`` for ``steps`` steps on ``data``'s batches (with RECAP's indicator
    when ``data`` carries one): AdamW with warmup and cosine decay, EMA 0.99. Returns the EMA
    weights. ``weights``: ``[N]`` per-frame loss weights of ``data.ds`` (e.g.
    :func:`awr_weights`), each batch's normalised by the loss to mean 1 over its frames
    (``Batch.weight``); None: the unweighted loss."""
    if weights is not None and len(weights) != data.ds.num_frames:
        raise ValueError(
            f"weights has {len(weights)} entries, the dataset {data.ds.num_frames} frames "
            f"({data.ds.root}); pass one weight per frame of the store"
        )
    if (model, steps, lr) not in _policy_steps:
        tcfg = TrainConfig(steps=steps, lr=lr, warmup_steps=min(100, steps // 5 + 1))
        opt = make_optimizer(tcfg)
        _policy_steps[(model, steps, lr)] = opt, make_train_step(model, opt, 0.99)
    opt, step_fn = _policy_steps[(model, steps, lr)]
    next_batch = data.batch
    if weights is not None:
        w = np.asarray(weights, np.float32)

        def next_batch():
            b = data.batch()  # sets data.last_index: the batch's frames
            return b.replace(weight=w[data.last_index])

    ts = TrainState(params, params, opt.init(params), jnp.int32(0), jax.random.PRNGKey(seed))
    ts, _ = fit(step_fn, ts, next_batch, steps, progress)
    return ts.ema
