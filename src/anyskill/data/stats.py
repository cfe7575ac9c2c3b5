"""Normalization statistics: mean, std, min, max and quantiles (q01 ... q99) per feature.

Per-episode statistics are exact. Dataset statistics come in two flavours:
``aggregate`` pools per-episode stats as frames arrive (exact mean/std/min/max by the
parallel-variance formula of Chan et al. 1979; quantiles as the frame-weighted mean of the
episode quantiles, the same approximation LeRobot's writer uses), and ``exact_stats``
recomputes everything from the full columns (``anyskill data stats --write``).

Shapes follow LeRobot's ``stats.json``: a vector feature ``[D]`` has stats ``[D]``; a camera
stream has per-channel stats ``[3, 1, 1]`` of pixels scaled to [0, 1]; ``count`` is ``[1]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Statistics of one feature. All arrays share the feature's stat shape; count is [1]."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    q01: np.ndarray
    q10: np.ndarray
    q50: np.ndarray
    q90: np.ndarray
    q99: np.ndarray
    count: np.ndarray

    def to_json(self) -> dict:
        return {
            f.name: np.asarray(getattr(self, f.name)).tolist() for f in dataclasses.fields(self)
        }

    @staticmethod
    def from_json(d: dict) -> FeatureStats:
        vals = {}
        for f in dataclasses.fields(FeatureStats):
            if f.name in d:
                vals[f.name] = np.asarray(d[f.name], dtype=np.int64 if f.name == "count" else None)
        mean = vals.get("mean")
        if mean is None:
            raise KeyError("mean")
        for name in ("q01", "q10", "q50", "q90", "q99"):
            vals.setdefault(name, np.full_like(mean, np.nan, dtype=np.float64))
        vals.setdefault("count", np.zeros(1, np.int64))
        return FeatureStats(**vals)


def compute_stats(x: np.ndarray) -> FeatureStats:
    """Exact statistics of ``x [N, ...]`` over the first axis (float64 accumulation)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    xf = x.astype(np.float64)
    qs = np.quantile(xf, list(QUANTILES.values()), axis=0) if len(xf) else None
    nan = np.full(xf.shape[1:], np.nan)
    return FeatureStats(
        mean=xf.mean(0) if len(xf) else nan,
        std=xf.std(0) if len(xf) else nan,
        min=xf.min(0) if len(xf) else nan,
        max=xf.max(0) if len(xf) else nan,
        **{k: (qs[i] if qs is not None else nan) for i, k in enumerate(QUANTILES)},
        count=np.array([len(xf)], np.int64),
    )


def image_stats(frames: np.ndarray, max_frames: int = 100) -> FeatureStats:
    """Per-channel stats ``[3, 1, 1]`` of uint8 frames ``[T, H, W, 3]`` scaled to [0, 1],
    from at most ``max_frames`` evenly spaced frames (as LeRobot subsamples videos)."""
    t = len(frames)
    take = np.linspace(0, t - 1, min(t, max_frames)).round().astype(int) if t else []
    px = np.asarray(frames)[take].reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    s = compute_stats(px)
    shape = (frames.shape[-1], 1, 1)
    return dataclasses.replace(
        s,
        **{
            f.name: getattr(s, f.name).reshape(shape)
            for f in dataclasses.fields(s)
            if f.name != "count"
        },
        count=np.array([t], np.int64),
    )


def aggregate(parts: list[FeatureStats]) -> FeatureStats:
    """Pool statistics of disjoint sets of frames.

    mean = Σ n_i μ_i / n,  var = Σ n_i (σ_i² + (μ_i − mean)²) / n  (exact);
    quantiles: frame-weighted mean of the parts' quantiles (an approximation)."""
    parts = [p for p in parts if int(p.count.sum()) > 0]
    if not parts:
        raise ValueError("aggregate needs at least one non-empty part")
    if len(parts) == 1:
        return parts[0]
    n = np.array([float(p.count.sum()) for p in parts])
    w = (n / n.sum()).reshape((-1,) + (1,) * parts[0].mean.ndim)
    mean = np.sum(w * np.stack([p.mean for p in parts]), 0)
    var = np.sum(
        w * np.stack([p.std**2 + (p.mean - mean) ** 2 for p in parts]),
        0,
    )
    qs = {k: np.sum(w * np.stack([getattr(p, k) for p in parts]), 0) for k in QUANTILES}
    return FeatureStats(
        mean=mean,
        std=np.sqrt(np.maximum(var, 0.0)),
        min=np.min(np.stack([p.min for p in parts]), 0),
        max=np.max(np.stack([p.max for p in parts]), 0),
        count=np.array([int(n.sum())], np.int64),
        **qs,
    )


def stats_to_json(stats: dict[str, FeatureStats]) -> dict:
    return {k: v.to_json() for k, v in stats.items()}


def stats_from_json(d: dict) -> dict[str, FeatureStats]:
    return {k: FeatureStats.from_json(v) for k, v in d.items() if isinstance(v, dict)}


def flatten_episode_stats(stats: dict[str, FeatureStats]) -> dict[str, list]:
    """Per-episode stats as LeRobot's episodes-parquet columns ``stats/<feature>/<stat>``."""
    out = {}
    for key, s in stats.items():
        for f in dataclasses.fields(s):
            arr = np.asarray(getattr(s, f.name))
            out[f"stats/{key}/{f.name}"] = arr.tolist()
    return out


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Affine normalization of one feature from its statistics.

    ``mean_std``: (x − mean) / (std + eps); ``quantile``: maps [q01, q99] to [−1, 1] (robust
    to outliers, as π0 normalizes actions)."""

    shift: np.ndarray
    scale: np.ndarray

    @staticmethod
    def from_stats(s: FeatureStats, mode: str = "mean_std", eps: float = 1e-6) -> Normalizer:
        if mode == "mean_std":
            return Normalizer(shift=np.asarray(s.mean), scale=np.asarray(s.std) + eps)
        if mode == "quantile":
            lo, hi = np.asarray(s.q01), np.asarray(s.q99)
            return Normalizer(shift=(lo + hi) / 2, scale=(hi - lo) / 2 + eps)
        raise ValueError(f"mode must be 'mean_std' or 'quantile', got {mode!r}")

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.shift) / self.scale).astype(np.float32)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        return (y * self.scale + self.shift).astype(np.float32)
