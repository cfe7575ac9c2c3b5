"""From an episode store to model batches: normalization, instruction tokens, camera frames.

The policy reads the LeRobot features a dataset declares in ``meta/info.json``, whatever
robot recorded it: ``observation.state`` (a vector of any size), the cameras
``observation.images.*`` (any size, resized to the model's ``image_size``), the instruction
``task`` and the ``action`` (a vector of any size). :func:`model_for_dataset` fills a
:class:`ModelConfig` in from them; :func:`check_features` refuses a dataset that does not
match a model already built (a resumed run, a policy fine-tuned on new data) in one error
naming the feature, what the model reads and what the dataset has. A structured state
(entity tokens) is used only when the dataset declares it (:mod:`anyskill.data.state_layout`)
or the env that recorded it does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib

import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.model import (
    INDICATOR_NEGATIVE,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
    Batch,
    Obs,
)
from anyskill.data.format import INFO_PATH, SchemaMismatchError
from anyskill.data.reader import Dataset
from anyskill.data.sampler import Sampler, SamplerConfig
from anyskill.data.state_layout import StateLayout, declared
from anyskill.nets.transformer import TokenizeError, tokenize
from anyskill.policies.base import IMAGE, PROMPT, STATE, InputSpec, ObservationError

STATE_KEY = "observation.state"
ACTION_KEY = "action"
CAMERA_PREFIX = "observation.images."
STD_FLOOR = 1e-2
CLIP = 10.0


@struct.dataclass
class Normalizer:
    """Per-feature ``(x - mean) / std`` for state and action (std floored at 1e-2, normalized
    state clipped to ±10 so a feature constant in the data cannot explode at test time)."""

    state_mean: jnp.ndarray
    state_std: jnp.ndarray
    action_mean: jnp.ndarray
    action_std: jnp.ndarray

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Normalizer:
        st = ds.stats
        for k in (STATE_KEY, ACTION_KEY):
            if k not in st:
                raise ValueError(f"{ds.root}: meta/stats.json has no statistics for {k!r}")

        def arr(k, f):
            return jnp.asarray(np.asarray(getattr(st[k], f), np.float32).reshape(-1))

        return cls(
            state_mean=arr(STATE_KEY, "mean"),
            state_std=jnp.maximum(arr(STATE_KEY, "std"), STD_FLOOR),
            action_mean=arr(ACTION_KEY, "mean"),
            action_std=jnp.maximum(arr(ACTION_KEY, "std"), STD_FLOOR),
        )

    def state(self, x):
        return jnp.clip((x - self.state_mean) / self.state_std, -CLIP, CLIP)

    def action(self, a):
        return (a - self.action_mean) / self.action_std

    def unaction(self, a):
        return a * self.action_std + self.action_mean


def camera_keys(ds: Dataset) -> list[str]:
    return list(ds.info.video_keys)


# ---- the dataset's features -> the model's inputs -------------------------------------------


def _dim(ds: Dataset, key: str) -> int:
    f = ds.info.features.get(key)
    if f is None or f.is_video:
        raise SchemaMismatchError(
            ds.root / INFO_PATH,
            f"features: no {key!r} vector (has {sorted(ds.info.features)})",
            "the policy trains on observation.state, action, the cameras observation.images.* "
            "and the task; rename the dataset's features to LeRobot's names",
        )
    return int(np.prod(f.shape))


def _mismatch(ds: Dataset, field: str, model: object, data: object, fix: str):
    return SchemaMismatchError(
        ds.root / INFO_PATH, f"{field}: the model reads {model}, this dataset has {data}", fix
    )


def model_for_dataset(model: ModelConfig, ds: Dataset, env=None) -> ModelConfig:
    """``model`` with the fields a dataset decides filled in: ``state_dim`` and
    ``action_dim`` (the sizes of ``observation.state`` and ``action``), ``cameras`` (the
    ones ``model.cameras`` names, else every camera) and, for the VLA with ``entity_tokens``,
    the entity layout of the state the dataset declares (else the one ``env``, the env that
    recorded it, declares with ``state_tokens()``; else none: one state token).

    A size or camera set by hand that the dataset does not have is refused (one error naming
    the feature)."""
    state_dim, action_dim = _dim(ds, STATE_KEY), _dim(ds, ACTION_KEY)
    fix = "leave it out: the dataset decides it"
    if model.state_dim and model.state_dim != state_dim:
        raise _mismatch(
            ds, f"features[{STATE_KEY!r}]", f"{model.state_dim} features", state_dim, fix
        )
    if model.action_dim and model.action_dim != action_dim:
        raise _mismatch(
            ds, f"features[{ACTION_KEY!r}]", f"{model.action_dim} features", action_dim, fix
        )
    have = tuple(ds.info.video_keys)
    cameras = model.cameras or have
    missing = [c for c in cameras if c not in have]
    if missing:
        raise _mismatch(
            ds,
            "features (--model.cameras)",
            f"cameras {list(cameras)}",
            f"{list(have)}",
            "name cameras the dataset has, or leave --model.cameras out to read them all",
        )
    m = dataclasses.replace(
        model,
        state_dim=state_dim,
        action_dim=action_dim,
        cameras=cameras,
        num_cameras=len(cameras),
    )
    if m.arch == "vla" and m.entity_tokens and not m.state_tokens:
        layout = declared(ds.info.features[STATE_KEY], ds.root / INFO_PATH)
        if layout is None and env is not None and hasattr(env, "state_tokens"):
            layout = StateLayout(env.state_tokens(), env.state_token_words())
        if layout is not None:
            m = dataclasses.replace(m, state_tokens=layout.tokens, state_token_words=layout.words)
    if m.subtasks and not m.subtask_slots:
        m = dataclasses.replace(m, subtask_slots=_subtask_slots(ds, m))
    return m


def _subtask_slots(ds: Dataset, m: ModelConfig) -> tuple[int, ...]:
    """The object entity tokens a subtask head points at; refuses a dataset without
    subtask labels or without the tabletop's entity layout (``subtasks=True``)."""
    from anyskill.algos.vla.subtasks import tabletop_slots
    from anyskill.data.subtasks import path_of

    if not path_of(ds).is_file():
        raise SchemaMismatchError(
            path_of(ds),
            "missing: --model.subtasks trains a subtask head on per-frame subtask labels",
            f"label the dataset with `anyskill data annotate-subtasks {ds.root}` (tabletop "
            "recordings), or train the flat model (leave out --model.subtasks)",
        )
    if not m.state_tokens:
        raise ValueError(
            f"{ds.root}: --model.subtasks needs entity tokens (the head points at object "
            "tokens); the dataset declares no entity layout or --model.no-entity-tokens was given"
        )
    try:
        return tabletop_slots(m.state_tokens, m.state_dim)
    except ValueError as e:
        raise SchemaMismatchError(ds.root / INFO_PATH, f"features[{STATE_KEY!r}]: {e}") from None


def check_features(ds: Dataset, model: ModelConfig) -> None:
    """Refuse a dataset whose features are not the inputs and outputs ``model`` was built
    for (a run resumed, or a trained policy fine-tuned, on other data): one
    :class:`~anyskill.data.format.SchemaMismatchError` naming ``meta/info.json``, the
    feature, what the model reads and what the dataset has — before anything compiles."""
    fix = "train a new run on this dataset, or use data recorded with the model's features"
    for key, want in ((STATE_KEY, model.state_dim), (ACTION_KEY, model.action_dim)):
        got = _dim(ds, key)
        if got != want:
            raise _mismatch(ds, f"features[{key!r}]", f"{want} features", f"{got}", fix)
    have = list(ds.info.video_keys)
    if model.cameras:
        missing = [c for c in model.cameras if c not in have]
        if missing:
            raise _mismatch(
                ds, f"features[{missing[0]!r}]", f"cameras {list(model.cameras)}", f"{have}", fix
            )
    elif len(have) != model.num_cameras:  # a model built by hand: cameras by count
        raise _mismatch(ds, "features (cameras)", f"{model.num_cameras} cameras", f"{have}", fix)
    if model.state_tokens:
        layout = declared(ds.info.features[STATE_KEY], ds.root / INFO_PATH)
        if layout is not None and layout.tokens != tuple(model.state_tokens):
            raise _mismatch(
                ds,
                f"features[{STATE_KEY!r}].info['anyskill.state_tokens']",
                f"entity tokens {list(model.state_tokens)}",
                f"{list(layout.tokens)}",
                fix,
            )


def camera_fields(model: ModelConfig) -> tuple[tuple[str, str], ...]:
    """``(policy field, dataset feature)`` per camera the model reads: the first is the
    protocol's ``observation/image``, the others keep their feature names
    (``observation.images.wrist``), which host adapter envs offer as they are."""
    keys = model.cameras or tuple(f"{CAMERA_PREFIX}{i}" for i in range(model.num_cameras))
    return tuple((IMAGE if i == 0 else k, k) for i, k in enumerate(keys))


def policy_inputs(model: ModelConfig, prompt_words: int = 0) -> tuple[InputSpec, ...]:
    """The observation fields a policy of ``model`` reads (its ``PolicySpec.inputs``): the
    state, each camera (at the model's image size) and the instruction (``prompt_words``
    fewer words than the model's context, for words a wrapper appends)."""
    inputs = [
        InputSpec(STATE, (model.state_dim,), "float32", f"robot state, as {STATE_KEY} of the data")
    ]
    size = (model.image_size, model.image_size, 3)
    for field, key in camera_fields(model):
        inputs.append(InputSpec(field, size, "uint8", f"camera {key}, RGB"))
    inputs.append(
        InputSpec(PROMPT, (), "str", "instruction", max_length=model.max_text_len - prompt_words)
    )
    return tuple(inputs)


def model_inputs(model: ModelConfig, obs, prompt_suffix: str = "") -> Obs:
    """The model's inputs from a policy :data:`~anyskill.policies.base.Batch`: the raw state
    (the policy normalizes it), each camera's images resized to the model's size (any size
    in), prompts (+ ``prompt_suffix``) tokenized. A field that is missing or does not fit
    the model raises :class:`~anyskill.policies.base.ObservationError` naming it, what the
    model reads and what came — before anything compiles."""

    def field(name: str):
        if name not in obs:
            want = [s.name for s in policy_inputs(model)]
            raise ObservationError(name, f"missing; the policy reads {want}, got {sorted(obs)}")
        return obs[name]

    state = np.asarray(field(STATE), np.float32)
    if state.ndim != 2 or state.shape[1] != model.state_dim:
        raise ObservationError(
            STATE,
            f"shape {state.shape[1:]}, expected ({model.state_dim},): the {STATE_KEY} the "
            "policy was trained on",
        )
    n = len(state)
    cameras = []
    for name, key in camera_fields(model):
        images = np.asarray(field(name), np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != n:
            raise ObservationError(
                name, f"shape {images.shape[1:]}, expected [H, W, 3] RGB (camera {key})"
            )
        if images.shape[1:3] != (model.image_size, model.image_size):
            images = resize(images, model.image_size)
        cameras.append(images)
    if cameras:
        images = np.stack(cameras, axis=1)
    else:
        images = np.zeros((n, 0, 1, 1, 3), np.uint8)
    try:
        prompts = [str(p) + prompt_suffix for p in field(PROMPT)]
        tokens, mask = tokenize(prompts, model.max_text_len)
    except ValueError as e:
        raise ObservationError(PROMPT, str(e)) from None
    return Obs(
        state=jnp.asarray(state),
        images=jnp.asarray(images),
        tokens=jnp.asarray(tokens),
        text_mask=jnp.asarray(mask),
    )


# ---- camera frames --------------------------------------------------------------------------


def decode_cameras(
    ds: Dataset, image_size: int, progress=None, keys: tuple[str, ...] | None = None
) -> np.ndarray | None:
    """Frames of the cameras ``keys`` (default: all) ``[N, C, S, S, 3] uint8`` in global
    frame order, decoded once per dataset version and image size and kept (memory-mapped) in
    the dataset cache dir.

    The cache is keyed on the dataset's resolved path and on every data and video file's
    size and modification time, so a copy of a dataset, or one whose video was replaced or
    damaged, is decoded afresh (and a damaged video fails naming the file)."""
    keys = list(keys) if keys is not None else camera_keys(ds)
    if not keys:
        return None
    from anyskill.data.reader import content_fingerprint, default_cache_dir

    shape = (ds.num_frames, len(keys), image_size, image_size, 3)
    # a subset or another order of the cameras is cached apart from all of them
    which = "" if keys == camera_keys(ds) else f"-{zlib.crc32(','.join(keys).encode()):08x}"
    cache = default_cache_dir() / (
        f"frames-{content_fingerprint(ds.root, ds.info, ds._rows)}-{image_size}{which}.npy"
    )
    if cache.exists():
        try:
            frames = np.load(cache, mmap_mode="r")
            if frames.shape == shape:
                return frames
        except (OSError, ValueError):  # a damaged cache file is rebuilt below
            pass
    out = _decode(ds, keys, image_size, progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
    try:
        np.save(tmp, out)
        os.replace(tmp, cache)
    except OSError:  # a full or read-only cache dir costs a decode next time, nothing more
        tmp.unlink(missing_ok=True)
    return out


def _decode(ds: Dataset, keys: list[str], image_size: int, progress=None) -> np.ndarray:
    out = np.zeros((ds.num_frames, len(keys), image_size, image_size, 3), np.uint8)
    for e in range(ds.num_episodes):
        s, t = int(ds.episodes.start[e]), int(ds.episodes.stop[e])
        for c, k in enumerate(keys):
            frames = ds.episode_video(e, k)
            if frames.shape[1:3] != (image_size, image_size):
                frames = resize(frames, image_size)
            out[s:t, c] = frames[: t - s]
        if progress:
            progress(1)
    return out


def resize(frames: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[T, H, W, 3]`` frames to ``size``×``size``."""
    h, w = frames.shape[1:3]
    ys = (np.arange(size) * h // size).astype(int)
    xs = (np.arange(size) * w // size).astype(int)
    return frames[:, ys][:, :, xs]


@dataclasses.dataclass
class TrainingData:
    """A dataset prepared for one model: sampler, task tokens, decoded frames, normalizer."""

    ds: Dataset
    sampler: Sampler
    task_tokens: np.ndarray  # [num_tasks, L]
    frames: np.ndarray | None  # [N, C, S, S, 3]
    normalizer: Normalizer

    @classmethod
    def build(
        cls,
        ds: Dataset,
        model: ModelConfig,
        batch_size: int,
        seed: int,
        progress=None,
        normalizer: Normalizer | None = None,
        **sampler_kw,
    ):
        """``model``: built for this dataset's features (:func:`model_for_dataset`), else a
        dataset that does not match it is refused (:func:`check_features`). ``sampler_kw``:
        extra :class:`SamplerConfig` fields (e.g. ``success=True`` for filtered BC);
        ``normalizer``: keep a trained policy's statistics instead of the data's."""
        check_features(ds, model)
        try:
            tokens, _ = tokenize(list(ds.tasks) or [""], model.max_text_len)
        except TokenizeError as e:
            raise SchemaMismatchError(ds.root / "meta" / "tasks.parquet", str(e)) from None
        sampler = Sampler(
            ds,
            SamplerConfig(
                batch_size=batch_size,
                chunk=model.horizon,
                state_key=STATE_KEY,
                seed=seed,
                **sampler_kw,
            ),
        )
        keys = model.cameras or None  # a model built by hand reads every camera
        out = cls(
            ds,
            sampler,
            tokens,
            decode_cameras(ds, model.image_size, progress, keys),
            normalizer or Normalizer.from_dataset(ds),
        )
        if model.subtasks:
            out.set_subtasks(model)
        return out

    def set_subtasks(self, model: ModelConfig) -> None:
        """Per-frame subtask classes and the action expert's prompts from the dataset's
        sidecar (:func:`anyskill.algos.vla.subtasks.frame_labels`); batches then carry
        ``subtask`` and ``subtask_tokens``."""
        from anyskill.algos.vla.subtasks import TASK_CLASS, frame_labels
        from anyskill.data.subtasks import path_of, read_subtasks
        from anyskill.envs.tabletop.tasks import FAMILY, parse_instruction

        ds = self.ds
        ann = read_subtasks(ds)
        if ann is None:
            raise SchemaMismatchError(
                path_of(ds), "missing", f"run `anyskill data annotate-subtasks {ds.root}`"
            )
        ti = np.asarray(ds.columns["task_index"]).reshape(-1)
        tasks = list(ds.tasks)
        family = np.full(len(tasks) + 1, -1, np.int64)
        for i, text in enumerate(tasks):
            content = parse_instruction(text)
            family[i] = -1 if content is None else content[FAMILY]
        frame_family = family[np.where(ti >= 0, ti, len(tasks))]
        bad = (ann.index >= 0) & (frame_family < 0)
        if bad.any():
            f = int(np.argmax(bad))
            raise SchemaMismatchError(
                ds.root / "meta" / "tasks.parquet",
                f"frame {f}'s task {tasks[ti[f]] if ti[f] >= 0 else ''!r} is no tabletop "
                "instruction, but the frame has a subtask label",
                "subtask classes need the tabletop task behind each labelled frame",
            )
        state = np.asarray(ds.columns[STATE_KEY], np.float32).reshape(ds.num_frames, -1)
        self.subtask_class = frame_labels(state, ann.index, ann.rows, frame_family)
        L = self.task_tokens.shape[1]
        try:
            self._subtask_tokens, _ = tokenize(list(ann.texts) or [""], L)
        except TokenizeError as e:
            raise SchemaMismatchError(path_of(ds), f"subtask text: {e}") from None
        self._subtask_text = np.where(self.subtask_class > TASK_CLASS, ann.index, -1)

    def __post_init__(self):
        # numpy copies of the normalizer: batches are normalized on the host in one pass,
        # not with a handful of small JAX dispatches per step
        n = self.normalizer
        self._np = {k: np.asarray(getattr(n, k)) for k in n.__dataclass_fields__}
        self.indicator: np.ndarray | None = None
        self.subtask_class: np.ndarray | None = None
        self._rng = np.random.default_rng(self.sampler.config.seed + 1)
        self.last_index = np.zeros(0, np.int64)

    def rng_state(self) -> str:
        """Where the batch stream stands (both generators), as JSON for a checkpoint's
        metadata: restoring it with :meth:`set_rng_state` continues the exact stream, so a
        resumed run draws the batches an uninterrupted one would."""
        return json.dumps([self.sampler.rng.bit_generator.state, self._rng.bit_generator.state])

    def set_rng_state(self, state: str) -> None:
        sampler, indicator = json.loads(state)
        self.sampler.rng.bit_generator.state = sampler
        self._rng.bit_generator.state = indicator

    def set_indicator(
        self, indicator: np.ndarray, prompt, drop, negatives_unconditioned: bool = False
    ) -> None:
        """Condition on a per-frame advantage indicator (RECAP): ``indicator`` ``[N]`` bool
        (True: positive). Where ``drop(rng, batch_size)`` is True a sample is shown without it
        (the unconditioned policy). With a ``prompt`` function each sample's instruction
        becomes ``prompt(task, positive)`` (dropped: the plain instruction); with
        ``prompt=None`` the batch's ``Obs.indicator`` carries it instead (1 positive,
        2 negative, 0 dropped; for models built with ``indicator=True``). The flywheel passes
        :func:`anyskill.algos.recap.advantage.prompt_with_indicator` and ``drop_indicator``.
        ``negatives_unconditioned``: negative frames are always shown without it
        (classifier-free style: the positive branch against the unconditioned policy)."""
        if len(indicator) != self.ds.num_frames:
            raise ValueError(
                f"indicator has {len(indicator)} entries, the dataset {self.ds.num_frames} frames"
            )
        self._prompted = prompt is not None
        if self._prompted:
            tasks = list(self.ds.tasks) or [""]
            L = self.task_tokens.shape[1]
            self._tok_pos, _ = tokenize([prompt(t, True) for t in tasks], L)
            self._tok_neg, _ = tokenize([prompt(t, False) for t in tasks], L)
        self.indicator = np.asarray(indicator, bool)
        self._drop = drop
        self._negatives_unconditioned = bool(negatives_unconditioned)

    def batch(self) -> Batch:
        """The next training batch (its frame indices are kept in ``last_index``)."""
        b = self.sampler.sample()
        idx = b.index
        self.last_index = idx
        ti = np.maximum(b.task_index, 0)
        tokens = self.task_tokens[ti]
        ind = None
        if self.indicator is not None:
            pos = self.indicator[idx]
            keep = ~self._drop(self._rng, len(idx))
            if self._negatives_unconditioned:
                keep = keep & pos
            if self._prompted:
                cond = np.where(pos[:, None], self._tok_pos[ti], self._tok_neg[ti])
                tokens = np.where(keep[:, None], cond, tokens)
            else:
                ind = np.where(
                    keep, np.where(pos, INDICATOR_POSITIVE, INDICATOR_NEGATIVE), INDICATOR_NONE
                ).astype(np.int32)
        n = self._np
        sub = {}
        if self.subtask_class is not None:
            # teacher forcing: the action expert reads the labelled subtask's text (the
            # instruction where the subtask is the task itself or the frame is unlabelled)
            text = self._subtask_text[idx]
            low = np.where((text >= 0)[:, None], self._subtask_tokens[np.maximum(text, 0)], tokens)
            sub = {"subtask": self.subtask_class[idx], "subtask_tokens": low}
        return Batch(
            obs=self._obs(b.state[:, -1], idx, tokens).replace(indicator=ind),
            actions=((b.action - n["action_mean"]) / n["action_std"]).astype(np.float32),
            action_mask=b.action_mask,
            **sub,
        )

    def chunk_at(self, idx: np.ndarray) -> np.ndarray:
        """Normalized action chunks ``[B, horizon, action_dim]`` that follow the frames
        ``idx`` in their episodes (the last action repeated past an episode's end), as in
        :meth:`batch`."""
        a = self.sampler.batch_at(np.asarray(idx)).action
        n = self._np
        return ((a - n["action_mean"]) / n["action_std"]).astype(np.float32)

    def obs_at(self, idx: np.ndarray) -> Obs:
        """Model inputs (normalized, plain instruction) of the frames ``idx``."""
        idx = np.asarray(idx)
        state = np.asarray(self.ds.columns[STATE_KEY][idx], np.float32).reshape(len(idx), -1)
        ti = np.maximum(np.asarray(self.ds.columns["task_index"][idx]), 0)
        return self._obs(state, idx, self.task_tokens[ti])

    def _obs(self, state: np.ndarray, idx: np.ndarray, tokens: np.ndarray) -> Obs:
        if self.frames is None:
            images = np.zeros((len(idx), 0, 1, 1, 3), np.uint8)
        else:
            images = self.frames[idx]
        n = self._np
        state = np.clip((state - n["state_mean"]) / n["state_std"], -CLIP, CLIP)
        return Obs(
            state=state.astype(np.float32), images=images, tokens=tokens, text_mask=tokens != 0
        )
