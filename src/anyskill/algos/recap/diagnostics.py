"""Diagnostics of RECAP's advantage labels: do they carry action information, and can the
policy read an indicator when it does? (issue 24; DESIGN.md, "Experiments".)

* :func:`label_predictability` — two small classifiers of the label, one from the state and
  the action chunk that followed, one from the state alone, trained on some episodes and
  scored (ROC AUC) on others. The gap between the two AUCs is the action information in the
  labels: a label the state alone predicts as well as (state, chunk) says *where* a frame is,
  not *what the robot did there*, and a policy conditioned on it has nothing to learn from
  it. :func:`episode_variance_share` is the share of the label's variance that only says
  which episode a frame came from.
* :func:`oracle_label_gap` — the positive control: demonstrations from two controllers that
  act differently at the same states (the scripted expert at full speed and slowed down),
  labelled by controller, fine-tuned on with the flywheel's own training step and indicator,
  then the held-out flow-matching loss with the true label against the flipped label, on the
  same noise and flow times (paired). A large gap shows the model reads an indicator when
  there is something to read.

``anyskill diagnose labels RUN_DIR`` and ``anyskill diagnose oracle`` run them
(:class:`DiagnoseLabels`, :class:`OracleConfig`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

from anyskill.algos.recap import advantage as A
from anyskill.algos.recap import recap as R
from anyskill.algos.recap.policy import indicator_model
from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.data import STATE_KEY, TrainingData, model_for_dataset
from anyskill.algos.vla.model import (
    INDICATOR_NEGATIVE,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
    Batch,
    PolicyModel,
)
from anyskill.data.reader import Dataset
from anyskill.nets.residual import ResidualMLP
from anyskill.nets.transformer import tokenize

# ---- exact ROC AUC and the episode's share of the label variance ----------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, exactly: the probability that a random positive scores
    above a random negative, ties counting one half (the Mann-Whitney U statistic with
    average ranks). ``labels`` bool ``[N]``; both classes must be present."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels, bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.shape[0]} entries, labels {y.shape[0]}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both classes, got {n_pos} positive and {n_neg} negative labels"
        )
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank (1-based) of each run of tied scores
    first = np.r_[True, sorted_s[1:] != sorted_s[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(s))
    ranks[order] = avg[group]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def episode_variance_share(label: np.ndarray, episode: np.ndarray) -> float:
    """Between-episode variance of the per-episode label mean over the label's total
    variance (frame-weighted, the correlation ratio η²): 1 when the label is constant within
    every episode (it only says which episode a frame is from), 0 when every episode has the
    same share of positives. NaN when the label is constant overall (no variance)."""
    y = np.asarray(label, np.float64).reshape(-1)
    ep = np.asarray(episode).reshape(-1)
    if y.shape != ep.shape:
        raise ValueError(f"label has {y.shape[0]} entries, episode {ep.shape[0]}")
    total = y.var()
    if total == 0:
        return float("nan")
    _, inv, count = np.unique(ep, return_inverse=True, return_counts=True)
    mean_e = np.bincount(inv, weights=y) / count
    between = np.sum(count * (mean_e - y.mean()) ** 2) / len(y)
    return float(between / total)


# ---- label predictability ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The small classifiers of the label (a residual MLP, AdamW, cross-entropy)."""

    folds: int = 4
    """Episodes are split into this many folds; each fold is scored by classifiers trained
    on the others (no frame of a scored episode is seen in training)."""
    steps: int = 400
    """Gradient steps per classifier."""
    batch_size: int = 256
    """Frames per step."""
    width: int = 128
    """Hidden width."""
    depth: int = 4
    """Dense layers inside residual blocks (a multiple of 4; 0: one hidden layer)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""

    def __post_init__(self):
        for name in ("folds", "steps", "batch_size", "width"):
            least = 2 if name == "folds" else 1
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class LabelPredictability:
    """How well the label is predicted on held-out episodes."""

    auc_state_chunk: float
    """Held-out ROC AUC of the classifier of (state, action chunk); mean over folds."""
    auc_state: float
    """Held-out ROC AUC of the classifier of the state alone; mean over folds."""
    auc_gap: float
    """``auc_state_chunk - auc_state``: the action information in the labels."""
    fold_auc_state_chunk: tuple[float, ...]
    """Per fold (NaN where the fold has one class only)."""
    fold_auc_state: tuple[float, ...]
    """Per fold."""
    episode_variance_share: float
    """Share of the label variance explained by the episode (:func:`episode_variance_share`)."""
    positive_fraction: float
    """Share of frames labelled positive."""
    frames: int
    """Frames classified."""
    episodes: int
    """Episodes they come from."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def episode_folds(episode: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """``[N]`` fold of every frame: the episodes (or any groups of frames) are shuffled
    (seeded) and dealt out in turn, so all frames of an episode are in one fold."""
    ids, inv = np.unique(np.asarray(episode), return_inverse=True)
    if len(ids) < folds:
        raise ValueError(f"{len(ids)} episodes cannot be split into {folds} folds")
    fold_of_episode = np.empty(len(ids), np.int64)
    fold_of_episode[np.random.default_rng(seed).permutation(len(ids))] = np.arange(len(ids)) % folds
    return fold_of_episode[inv]


def out_of_fold_scores(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, cfg: ClassifierConfig, seed: int
) -> np.ndarray:
    """``[folds, N]`` logits of every frame by the classifier of each fold, which was trained
    on the frames of the other folds only. All folds train at once (``vmap``, one compile)."""
    x = np.asarray(x, np.float32)
    # standardise with all frames' statistics: no label is used, so nothing leaks
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    net = ResidualMLP(cfg.width, cfg.depth, 1)
    opt = optax.adamw(cfg.lr, weight_decay=cfg.weight_decay)
    n = len(x)

    def bce(params, xb, yb):
        logit = net.apply(params, xb)[:, 0]
        return optax.sigmoid_binary_cross_entropy(logit, yb).mean()

    def train_one(key, f, xj, yj, fj):
        k_init, k_run = jax.random.split(key)
        params = net.init(k_init, xj[:1])
        train_p = (fj != f).astype(jnp.float32)
        train_p = train_p / train_p.sum()

        def update(carry, k):
            params, opt_state = carry
            idx = jax.random.choice(k, n, (cfg.batch_size,), p=train_p)
            grads = jax.grad(bce)(params, xj[idx], yj[idx])
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(
            update, (params, opt.init(params)), jax.random.split(k_run, cfg.steps)
        )
        return net.apply(params, xj)[:, 0]

    keys = jax.random.split(jax.random.key(seed), cfg.folds)
    run = jax.jit(jax.vmap(train_one, in_axes=(0, 0, None, None, None)))
    scores = run(keys, jnp.arange(cfg.folds), x, np.asarray(y, np.float32), np.asarray(fold))
    return np.asarray(scores)


def _fold_aucs(scores: np.ndarray, y: np.ndarray, fold: np.ndarray) -> tuple[float, ...]:
    out = []
    for f in range(scores.shape[0]):
        held = fold == f
        yf = y[held]
        out.append(roc_auc(scores[f, held], yf) if 0 < yf.sum() < len(yf) else float("nan"))
    return tuple(out)


def label_predictability(
    state: np.ndarray,
    chunk: np.ndarray,
    label: np.ndarray,
    episode: np.ndarray,
    seed: int = 0,
    cfg: ClassifierConfig = ClassifierConfig(),
    groups: np.ndarray | None = None,
) -> LabelPredictability:
    """Held-out ROC AUC of the label from (state, action chunk) and from the state alone,
    split by episode (``cfg.folds``-fold cross-validation over episodes), their gap, and the
    episode's share of the label variance.

    ``state`` ``[N, S]``, ``chunk`` ``[N, H*A]`` (or ``[N, H, A]``), ``label`` ``[N]`` bool,
    ``episode`` ``[N]`` int. ``groups`` ``[N]`` (default: ``episode``): frames of one group
    are never split between training and scoring — episodes that start from the same state
    must be one group, else a classifier that remembers a start state's label from one
    episode is scored on its partner's (the oracle's paired controllers have opposite
    labels: that would read as an AUC far below 0.5)."""
    state = np.asarray(state, np.float32).reshape(len(state), -1)
    chunk = np.asarray(chunk, np.float32).reshape(len(chunk), -1)
    y = np.asarray(label, bool).reshape(-1)
    episode = np.asarray(episode).reshape(-1)
    sizes = {"state": len(state), "chunk": len(chunk), "label": len(y), "episode": len(episode)}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"label_predictability: inputs of different lengths {sizes}")
    if y.all() or not y.any():
        raise ValueError(f"the label is {bool(y[0])} on all {len(y)} frames: nothing to predict")
    groups = episode if groups is None else np.asarray(groups).reshape(-1)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries, label {len(y)}")
    fold = episode_folds(groups, cfg.folds, seed)
    both = out_of_fold_scores(np.concatenate([state, chunk], 1), y, fold, cfg, seed)
    alone = out_of_fold_scores(state, y, fold, cfg, seed)
    auc_sc, auc_s = _fold_aucs(both, y, fold), _fold_aucs(alone, y, fold)
    mean_sc, mean_s = float(np.nanmean(auc_sc)), float(np.nanmean(auc_s))
    return LabelPredictability(
        auc_state_chunk=mean_sc,
        auc_state=mean_s,
        auc_gap=mean_sc - mean_s,
        fold_auc_state_chunk=auc_sc,
        fold_auc_state=auc_s,
        episode_variance_share=episode_variance_share(y, episode),
        positive_fraction=float(y.mean()),
        frames=len(y),
        episodes=len(np.unique(episode)),
    )


# ---- the labels of a flywheel run ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelData:
    """Frames of an episode store with their advantage label (``N`` frames, store order)."""

    state: np.ndarray
    """``[N, S]`` float32 ``observation.state``."""
    chunk: np.ndarray
    """``[N, H*A]`` float32: the next ``H`` actions of the frame's episode (normalized; the
    last action repeated past the episode's end), as the policy is trained on them."""
    label: np.ndarray
    """``[N]`` bool: "advantage: positive"."""
    episode: np.ndarray
    """``[N]`` int: the frame's episode."""


def store_frames(data: TrainingData, label: np.ndarray, frames: np.ndarray) -> LabelData:
    """:class:`LabelData` of ``frames`` of ``data``'s store: the chunk is
    :meth:`TrainingData.chunk_at`'s, the one the policy's batches hold."""
    frames = np.asarray(frames, np.int64)
    state = np.asarray(data.ds.columns[STATE_KEY][frames], np.float32).reshape(len(frames), -1)
    chunk = data.chunk_at(frames).reshape(len(frames), -1)
    episode = np.asarray(data.ds.columns["episode_index"][frames], np.int64)
    return LabelData(state, chunk, np.asarray(label, bool)[frames], episode)


def advantage_rounds(run_dir: Path) -> list[int]:
    """Rounds of a flywheel run whose advantages are saved (``advantage-rK.npz``), sorted."""
    found = []
    for p in Path(run_dir).glob("advantage-r*.npz"):
        tail = p.name[len("advantage-r") : -len(".npz")]
        if tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def label_data(run_dir: Path | str, round: int | None = None) -> LabelData:
    """The frames of a flywheel run's store labelled in round ``round`` (default: the last
    round with advantages) with that round's indicator (``RUN/advantage-r{round}.npz``):
    the store's first ``N`` frames, ``N`` the length of the file's indicator (later rounds
    append episodes; the frames a round labelled keep their place)."""
    # a flywheel run directory is RECAP's format; imported here so that importing algos/
    # never imports flywheel/ (as in anyskill.algos.recap.policy)
    from anyskill import rundir
    from anyskill.flywheel.artifacts import RunPaths
    from anyskill.flywheel.config import FlywheelConfig

    paths = RunPaths(Path(run_dir))
    have = advantage_rounds(paths.root)
    if round is None:
        if not have:
            raise ValueError(
                f"{paths.root}: no advantage-rK.npz (a flywheel run directory after its first "
                "advantage phase is needed)"
            )
        round = have[-1]
    path = paths.advantage(round)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; --round must be one of {have or 'none yet'}")
    labels = R.Advantages.load(path)
    cfg = rundir.load_config(FlywheelConfig, paths.config)
    ds = Dataset.open(paths.data)
    n = len(labels.indicator)
    stops = np.asarray(ds.episodes.stop)
    if n > ds.num_frames or n not in stops:
        raise ValueError(
            f"{path}: labels {n} frames, but the store {paths.data} has no episode ending at "
            f"frame {n} ({ds.num_frames} frames); the labels belong to another store"
        )
    model = model_for_dataset(cfg.model, ds)
    data = TrainingData.build(ds, model, batch_size=1, seed=0)
    return store_frames(data, labels.indicator, np.arange(n))


def reading(p: LabelPredictability) -> str:
    """One paragraph saying what the figures mean."""
    share = p.episode_variance_share
    share_txt = (
        f"{share:.0%} of the label variance only says which episode a frame came from"
        if np.isfinite(share)
        else "the label has no variance"
    )
    strength = "only weakly predictable" if p.auc_state_chunk < 0.7 else "predictable"
    if p.auc_gap < 0.03:
        verdict = (
            "the action chunk adds (almost) nothing to what the state already says about the "
            "label: at a given state the positive and negative actions barely differ, so a "
            "policy conditioned on it has little to read (and a correctly trained one should "
            "ignore it)"
        )
    elif p.auc_gap < 0.1 or p.auc_state_chunk < 0.7:
        verdict = "the action chunk adds a little information about the label beyond the state"
    else:
        verdict = (
            "the action chunk carries clear information about the label beyond the state: "
            "the labels tell actions apart at the same states"
        )
    if p.auc_state < 0.5:
        verdict += (
            " (the state-alone classifier scores below chance on held-out episodes — it learns "
            "patterns of the training episodes that do not carry over — so the gap overstates "
            "the action information; the (state, chunk) AUC itself is the safer figure)"
        )
    return (
        f"On held-out episodes the label is predicted with ROC AUC {p.auc_state_chunk:.3f} "
        f"from (state, action chunk) and {p.auc_state:.3f} from the state alone (gap "
        f"{p.auc_gap:+.3f}; 0.5 is chance), so the label is {strength} from what the policy "
        f"sees and does; {verdict}. {share_txt} "
        f"({p.frames} frames, {p.episodes} episodes, {p.positive_fraction:.0%} positive)."
    )


# ---- where the labels and the AWR weights fall ------------------------------------------------

#: frame sources of :func:`label_sources`, in report order
SOURCES = ("demonstration", "corrected", "success", "failure")


def frame_sources(ds: Dataset, n: int) -> np.ndarray:
    """``[n]`` source of each of the store's first ``n`` frames: ``demonstration``,
    ``corrected`` (a corrector's frame), or a deployed episode's own frame by its outcome
    (``success`` / ``failure``)."""
    ep = ds.episodes
    out = np.empty(n, object)
    for s, t, source, ok in zip(ep.start, ep.stop, ep.source, ep.success, strict=True):
        if s >= n:
            continue
        kind = (
            "demonstration" if source == "demonstration" else ("success" if ok > 0 else "failure")
        )
        out[s : min(t, n)] = kind
    out[np.asarray(ds.columns["intervention"], bool)[:n]] = "corrected"
    return out


def label_sources(
    indicator: np.ndarray,
    sources: np.ndarray,
    weights: np.ndarray | None = None,
) -> dict:
    """Per source (:data:`SOURCES`): its share of the frames, the share of its frames
    labelled positive, and — given AWR ``weights`` — its share of the total weight; plus the
    weights' effective sample size as a fraction of the frames (``(Σw)² / Σw² / N``: 1 for
    equal weights, small when a few frames carry the loss)."""
    ind, src = np.asarray(indicator, bool), np.asarray(sources)
    if len(ind) != len(src) or (weights is not None and len(weights) != len(ind)):
        raise ValueError(
            f"indicator ({len(ind)}), sources ({len(src)}) and weights "
            f"({None if weights is None else len(weights)}) must cover the same frames"
        )
    out: dict = {"frames": int(len(ind))}
    w = None if weights is None else np.asarray(weights, np.float64)
    if w is not None:
        out["effective_sample_fraction"] = float(w.sum() ** 2 / (w**2).sum() / len(w))
    for k in SOURCES:
        m = src == k
        row = {"frames": float(m.mean()), "positive": float(ind[m].mean()) if m.any() else None}
        if w is not None:
            row["weight"] = float(w[m].sum() / w.sum())
        out[k] = row
    return out


# ---- the oracle-label test -------------------------------------------------------------------


def _flywheel_model() -> ModelConfig:
    """The flywheel's default policy architecture (the model whose indicator is in question)."""
    from anyskill.flywheel.config import FlywheelConfig

    return {f.name: f for f in dataclasses.fields(FlywheelConfig)}["model"].default


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    """The oracle-label test, a positive control: a fast and a slow scripted controller act
    differently at the same states and are labelled positive and negative; the flywheel's
    policy is fine-tuned on them with the label, and its held-out flow-matching loss with the
    true vs the flipped label (same noise and flow times) says whether it reads the label.
    Prints JSON and a reading."""

    env: str = "tabletop-reach"
    """Tabletop task mix whose scripted expert records the demonstrations."""
    episodes: int = 64
    """Training episodes per controller (the fast and the slow one start from the same
    states)."""
    heldout_episodes: int = 16
    """Held-out episodes per controller (other start states) for the paired loss."""
    fast_speed: float = 1.0
    """Speed (fraction of full speed) of the controller labelled positive."""
    slow_speed: float = 0.4
    """Speed of the controller labelled negative (the same expert, slowed down)."""
    noise: float = 0.1
    """Action noise of both controllers."""
    model: ModelConfig = dataclasses.field(default_factory=_flywheel_model)
    """Policy architecture (default: the flywheel's)."""
    indicator: Literal["prompt", "embedding", "modulation"] = "prompt"
    """How the policy is told the label, as the flywheel's --indicator."""
    pretrain_steps: int = 300
    """Behaviour cloning on all the data without the label first (the starting policy)."""
    steps: int = 300
    """Fine-tuning steps with the label (the flywheel's RECAP step)."""
    batch_size: int = 64
    """Policy training batch size."""
    lr: float = 3e-4
    """Policy learning rate."""
    indicator_dropout: float = 0.3
    """Fraction of training samples shown without the label (as the flywheel)."""
    eval_frames: int = 1024
    """Held-out frames the paired loss is measured on (at most all of them)."""
    classifier: ClassifierConfig = ClassifierConfig()
    """The label-predictability classifiers run on the oracle data."""
    seed: int = 0
    """Seed of the recordings, the training and the evaluation noise."""
    work_dir: Path | None = None
    """Where the recorded stores go (default: a temporary directory, removed after)."""

    def __post_init__(self):
        for name in ("episodes", "heldout_episodes", "steps", "batch_size", "eval_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if not 0 < self.slow_speed < self.fast_speed:
            raise ValueError(
                f"need 0 < slow_speed < fast_speed, got slow {self.slow_speed}, fast "
                f"{self.fast_speed} (the fast controller is the positive label)"
            )
        if not 0 <= self.indicator_dropout < 1:
            raise ValueError(f"indicator_dropout must be in [0, 1), got {self.indicator_dropout}")
        if self.indicator != "prompt" and self.model.arch != "vla":
            raise ValueError(
                f"--indicator {self.indicator} needs --model.arch vla (got {self.model.arch!r})"
            )
        if self.model.arch == "mlp-bc":
            raise ValueError("the oracle test needs a flow policy (--model.arch vla or mlp-flow)")


@dataclasses.dataclass(frozen=True)
class OracleResult:
    """What the oracle test measured."""

    loss_true: float
    """Held-out flow-matching loss with the true label (mean over frames)."""
    loss_flipped: float
    """The same frames, noise and flow times with the label flipped."""
    loss_none: float
    """The same with no label (the unconditioned policy)."""
    loss_gap: float
    """``loss_flipped - loss_true``: how much the policy reads the label."""
    loss_gap_se: float
    """Standard error of the gap over frames."""
    relative_gap: float
    """``loss_gap / loss_true``."""
    frames: int
    """Held-out frames measured."""
    fast_steps: float
    """Mean episode length of the fast controller (training episodes)."""
    slow_steps: float
    """Mean episode length of the slow controller."""
    predictability: LabelPredictability
    """Label predictability on the oracle training data."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def record_controllers(
    stores: tuple[tuple[Path, int], ...],
    env_name: str,
    speeds: tuple[float, ...],
    noise: float,
    seed: int,
) -> list[Dataset]:
    """New stores ``(path, episodes)``: in each, for each speed in turn, its episodes of the
    tabletop scripted expert at that speed (the per-episode speed fixed, the rest of its
    style as drawn). Episode ``j`` of a store starts from the same reset key at every speed
    (the controllers meet the same start states); the stores' episodes start from distinct
    keys (``fold_in(key(seed), i)``, ``i`` counted over the stores), so a held-out store
    holds other start states. One rollout per speed records every store's episodes."""
    from anyskill import envs
    from anyskill.data.record import expert_envs, recording_spec
    from anyskill.data.writer import EpisodeWriter
    from anyskill.envs.tabletop import ScriptedExpert
    from anyskill.envs.tabletop.expert import ExpertStyle
    from anyskill.names import unknown_name
    from anyskill.rollout import EpisodeKeys, JaxBatchEnv, rollout
    from anyskill.rollout.policies import StatePolicy

    if env_name not in expert_envs():
        raise unknown_name("tabletop env with a scripted expert (--env)", env_name, expert_envs())
    env = envs.make(env_name)
    spec = recording_spec(env_name, False, 64, False, noise, seed)
    benv = JaxBatchEnv(env)
    total = sum(n for _, n in stores)
    base = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i)))(jnp.arange(total))
    writers = [
        EpisodeWriter.create(
            out, spec.features, spec.fps, env_name, source_env=spec.source, durable=False
        )
        for out, _ in stores
    ]
    first = np.cumsum([0] + [n for _, n in stores])
    try:
        for speed in speeds:
            expert = ScriptedExpert(env, noise=noise, style=ExpertStyle(speed=(speed, speed)))
            name = f"scripted-expert(speed={speed}, noise={noise})"
            policy = StatePolicy(expert, env.action_dim, env.control_hz, name)
            ep = rollout(
                benv,
                policy,
                EpisodeKeys(reset=keys[:, 0], run=keys[:, 1]),
                num_envs=total,
                replan_every=1,
            )
            for w, writer in enumerate(writers):
                for i in range(int(first[w]), int(first[w + 1])):
                    writer.add_episode(
                        ep.frames(i),
                        task=ep.task[i],
                        success=bool(ep.success[i]),
                        source="demonstration",
                        policy_version=name,
                        episode_info={"speed": speed, "env_seed": seed, "env_episode": i},
                    )
    finally:
        for writer in writers:
            writer.close()
    return [Dataset.open(out) for out, _ in stores]


def labelled_obs(data: TrainingData, frames: np.ndarray, positive, prompted: bool):
    """Model inputs of ``frames`` told ``positive`` (``[N]`` bool, or None: no label) as the
    flywheel trains its policy: words ending the instruction (``prompted``) or the model's
    indicator input."""
    obs = data.obs_at(frames)
    if not prompted:
        if positive is None:  # trained on as a dropped label: the "none" value, not no input
            return obs.replace(indicator=np.full(len(frames), INDICATOR_NONE, np.int32))
        ind = np.where(positive, INDICATOR_POSITIVE, INDICATOR_NEGATIVE).astype(np.int32)
        return obs.replace(indicator=ind)
    if positive is None:
        return obs
    positive = np.asarray(positive, bool)
    tasks = list(data.ds.tasks) or [""]
    ti = np.maximum(np.asarray(data.ds.columns["task_index"][frames]), 0)
    prompts = [
        A.prompt_with_indicator(tasks[t], bool(p)) for t, p in zip(ti, positive, strict=True)
    ]
    tokens, mask = tokenize(prompts, data.task_tokens.shape[1])
    return obs.replace(tokens=tokens, text_mask=mask)


#: jitted per-frame loss per model: compiled once per process
_frame_losses: dict = {}


def paired_label_losses(
    model: PolicyModel,
    params: Any,
    data: TrainingData,
    label: np.ndarray,
    frames: np.ndarray,
    prompted: bool,
    seed: int,
    batch: int = 256,
) -> dict[str, np.ndarray]:
    """Per-frame flow-matching loss ``[len(frames)]`` of ``frames`` told the true label
    (``label[frames]``), the flipped one and none — each frame with the same noise and flow
    time in all three (its key is ``fold_in(key(seed), frame)``), so the differences are
    paired."""

    if model not in _frame_losses:

        def one(params, key, b: Batch):
            return model.loss(params, key, jax.tree.map(lambda x: x[None], b))[0]

        _frame_losses[model] = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
    per_frame = _frame_losses[model]
    out: dict[str, list] = {"true": [], "flipped": [], "none": []}
    frames = np.asarray(frames, np.int64)
    base = jax.random.key(seed)
    for s in range(0, len(frames), batch):
        # one compiled shape: the last batch is padded with its final frame
        idx = frames[s : s + batch]
        full = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
        keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(full))
        actions = data.chunk_at(full)
        mask = data.sampler.batch_at(full).action_mask
        y = np.asarray(label, bool)[full]
        for name, pos in (("true", y), ("flipped", ~y), ("none", None)):
            obs = labelled_obs(data, full, pos, prompted)
            loss = per_frame(params, keys, Batch(obs, actions, mask))
            out[name].append(np.asarray(loss)[: len(idx)])
    return {k: np.concatenate(v) for k, v in out.items()}


def oracle_label_gap(
    cfg: OracleConfig = OracleConfig(), progress: Callable[[int], Any] | None = None
) -> OracleResult:
    """Record a fast and a slow controller (fast = positive), train the flywheel's policy on
    it as the flywheel does (behaviour cloning, then fine-tuning with the label through
    :func:`~anyskill.algos.recap.recap.finetune_policy`, with the flywheel's indicator and
    dropout), and measure the paired held-out loss gap between the flipped and the true
    label; also the label predictability of the oracle data. ``progress(1)`` after every
    policy training step."""
    with tempfile.TemporaryDirectory(prefix="anyskill-oracle-") as tmp:
        root = Path(cfg.work_dir) if cfg.work_dir is not None else Path(tmp)
        return _oracle(cfg, root, progress)


def _oracle(cfg: OracleConfig, root: Path, progress) -> OracleResult:
    speeds = (cfg.fast_speed, cfg.slow_speed)
    train_ds, held_ds = record_controllers(
        ((root / "train", cfg.episodes), (root / "heldout", cfg.heldout_episodes)),
        cfg.env,
        speeds,
        cfg.noise,
        cfg.seed,
    )
    # the first half of every store is the fast controller's
    train_label = train_ds.columns["episode_index"] < cfg.episodes
    held_label = held_ds.columns["episode_index"] < cfg.heldout_episodes

    model = PolicyModel(model_for_dataset(cfg.model, train_ds))
    params = model.init(jax.random.key(cfg.seed))
    bc = TrainingData.build(train_ds, model.cfg, cfg.batch_size, cfg.seed)
    if cfg.pretrain_steps:
        params = R.finetune_policy(
            model, params, bc, cfg.pretrain_steps, cfg.lr, cfg.seed, progress
        )
    model, params = indicator_model(model, params, cfg.indicator)
    prompted = cfg.indicator == "prompt"
    data = TrainingData.build(
        train_ds, model.cfg, cfg.batch_size, cfg.seed + 1, normalizer=bc.normalizer
    )
    data.set_indicator(
        train_label,
        A.prompt_with_indicator if prompted else None,
        lambda rng, n: A.drop_indicator(rng, n, cfg.indicator_dropout),
    )
    params = R.finetune_policy(model, params, data, cfg.steps, cfg.lr, cfg.seed + 1, progress)

    held = TrainingData.build(
        held_ds, model.cfg, cfg.batch_size, cfg.seed, normalizer=bc.normalizer
    )
    rng = np.random.default_rng(cfg.seed)
    n_eval = min(cfg.eval_frames, held_ds.num_frames)
    frames = np.sort(rng.choice(held_ds.num_frames, n_eval, replace=False))
    losses = paired_label_losses(model, params, held, held_label, frames, prompted, cfg.seed)
    diff = losses["flipped"] - losses["true"]
    ep = train_ds.episodes
    lab = store_frames(bc, train_label, np.arange(train_ds.num_frames))
    # episode j of each controller starts from the same state: a pair is one group
    pair = lab.episode % cfg.episodes
    pred = label_predictability(
        lab.state, lab.chunk, lab.label, lab.episode, cfg.seed, cfg.classifier, groups=pair
    )
    loss_true = float(losses["true"].mean())
    return OracleResult(
        loss_true=loss_true,
        loss_flipped=float(losses["flipped"].mean()),
        loss_none=float(losses["none"].mean()),
        loss_gap=float(diff.mean()),
        loss_gap_se=float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0,
        relative_gap=float(diff.mean() / loss_true) if loss_true > 0 else float("nan"),
        frames=int(n_eval),
        fast_steps=float(np.mean(ep.length[: cfg.episodes])),
        slow_steps=float(np.mean(ep.length[cfg.episodes :])),
        predictability=pred,
    )


def oracle_reading(r: OracleResult) -> str:
    """One paragraph saying what the oracle figures mean."""
    readable = r.loss_gap > 3 * r.loss_gap_se and r.relative_gap > 0.05
    verdict = (
        "the policy reads the indicator when the label determines the action"
        if readable
        else "the policy barely reads the indicator even where the label determines the "
        "action: the bottleneck is the model or its training, not only the labels"
    )
    p = r.predictability
    return (
        f"Fast (positive, {r.fast_steps:.0f} steps per episode) vs slow (negative, "
        f"{r.slow_steps:.0f} steps) controller: held-out flow-matching loss "
        f"{r.loss_true:.4f} with the true label, {r.loss_flipped:.4f} flipped, "
        f"{r.loss_none:.4f} without (gap {r.loss_gap:+.4f} ± {r.loss_gap_se:.4f}, "
        f"{r.relative_gap:+.0%} of the loss, {r.frames} frames): {verdict}. Label "
        f"predictability on these data: AUC {p.auc_state_chunk:.3f} from (state, chunk), "
        f"{p.auc_state:.3f} from the state alone (gap {p.auc_gap:+.3f})."
    )


# ---- the command line -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiagnoseLabels:
    """How much action information a flywheel run's advantage labels carry: held-out ROC AUC
    of the label from (state, action chunk) vs from the state alone, and the share of the
    label variance that only says which episode a frame came from. Prints JSON and a
    reading."""

    run_dir: tyro.conf.Positional[Path]
    """A flywheel run directory (`anyskill flywheel` / `anyskill demo`)."""
    round: int | None = None
    """Round whose labels to read (advantage-rN.npz; default: the last)."""
    classifier: ClassifierConfig = ClassifierConfig()
    """The classifiers."""
    seed: int = 0
    """Seed of the episode folds and the classifiers."""


def diagnose(kind: str, args: list[str], parse) -> dict:
    """``anyskill diagnose labels|oracle ARGS``: ``parse(cls, args, prog)`` parses the
    command line; returns ``{"result": ..., "reading": ...}``."""
    commands = {"labels": DiagnoseLabels, "oracle": OracleConfig}
    if kind not in commands:
        from anyskill.names import unknown_name

        raise unknown_name("diagnose subcommand", kind, commands)
    cfg = parse(commands[kind], args, f"anyskill diagnose {kind}")
    if isinstance(cfg, DiagnoseLabels):
        d = label_data(cfg.run_dir, cfg.round)
        p = label_predictability(d.state, d.chunk, d.label, d.episode, cfg.seed, cfg.classifier)
        return {"result": p.to_json(), "reading": reading(p)}
    from tqdm.auto import tqdm

    with tqdm(total=cfg.pretrain_steps + cfg.steps, desc="oracle policy", leave=False) as bar:
        r = oracle_label_gap(cfg, bar.update)
    return {"result": r.to_json(), "reading": oracle_reading(r)}
