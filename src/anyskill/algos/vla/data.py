"""From an episode store to model batches: normalization, instruction tokens, camera frames."""

from __future__ import annotations

import dataclasses
import json
import os

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
from anyskill.data.reader import Dataset
from anyskill.data.sampler import Sampler, SamplerConfig
from anyskill.nets.transformer import tokenize

STATE_KEY = "observation.state"
ACTION_KEY = "action"
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


def decode_cameras(ds: Dataset, image_size: int, progress=None) -> np.ndarray | None:
    """All camera frames ``[N, C, S, S, 3] uint8`` in global frame order, decoded once per
    dataset version and image size and kept (memory-mapped) in the dataset cache dir.

    The cache is keyed on the dataset's resolved path and on every data and video file's
    size and modification time, so a copy of a dataset, or one whose video was replaced or
    damaged, is decoded afresh (and a damaged video fails naming the file)."""
    keys = camera_keys(ds)
    if not keys:
        return None
    from anyskill.data.reader import content_fingerprint, default_cache_dir

    shape = (ds.num_frames, len(keys), image_size, image_size, 3)
    cache = default_cache_dir() / (
        f"frames-{content_fingerprint(ds.root, ds.info, ds._rows)}-{image_size}.npy"
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
        """``sampler_kw``: extra :class:`SamplerConfig` fields (e.g. ``success=True`` for
        filtered BC); ``normalizer``: keep a trained policy's statistics instead of the data's."""
        for k in (STATE_KEY, ACTION_KEY):
            if k not in ds.columns:
                raise ValueError(
                    f"{ds.root}: no {k!r} feature (has {sorted(ds.columns)}); the policy "
                    "trains on observation.state, action and the cameras"
                )
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
        tokens, _ = tokenize(list(ds.tasks) or [""], model.max_text_len)
        return cls(
            ds,
            sampler,
            tokens,
            decode_cameras(ds, model.image_size, progress),
            normalizer or Normalizer.from_dataset(ds),
        )

    def __post_init__(self):
        # numpy copies of the normalizer: batches are normalized on the host in one pass,
        # not with a handful of small JAX dispatches per step
        n = self.normalizer
        self._np = {k: np.asarray(getattr(n, k)) for k in n.__dataclass_fields__}
        self.indicator: np.ndarray | None = None
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

    def set_indicator(self, indicator: np.ndarray, prompt, drop) -> None:
        """Condition on a per-frame advantage indicator (RECAP): ``indicator`` ``[N]`` bool
        (True: positive). Where ``drop(rng, batch_size)`` is True a sample is shown without it
        (the unconditioned policy). With a ``prompt`` function each sample's instruction
        becomes ``prompt(task, positive)`` (dropped: the plain instruction); with
        ``prompt=None`` the batch's ``Obs.indicator`` carries it instead (1 positive,
        2 negative, 0 dropped; for models built with ``indicator=True``). The flywheel passes
        :func:`anyskill.algos.recap.advantage.prompt_with_indicator` and ``drop_indicator``."""
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
            if self._prompted:
                cond = np.where(pos[:, None], self._tok_pos[ti], self._tok_neg[ti])
                tokens = np.where(keep[:, None], cond, tokens)
            else:
                ind = np.where(
                    keep, np.where(pos, INDICATOR_POSITIVE, INDICATOR_NEGATIVE), INDICATOR_NONE
                ).astype(np.int32)
        n = self._np
        return Batch(
            obs=self._obs(b.state[:, -1], idx, tokens).replace(indicator=ind),
            actions=((b.action - n["action_mean"]) / n["action_std"]).astype(np.float32),
            action_mask=b.action_mask,
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
