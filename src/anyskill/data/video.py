"""Camera streams as MP4 (H.264, yuv420p) through imageio-ffmpeg's bundled ffmpeg.

Every frame ``i`` of an episode is presented at ``i / fps`` seconds, matching the episode's
``timestamp`` column, so LeRobot's decoder finds each frame by timestamp. A short GOP keeps
random access cheap (LeRobot encodes with ``g=2`` for the same reason). The encoding is
lossy: decoded pixels differ from the recorded ones by a few levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anyskill.data.format import CorruptFileError


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError(
            "camera streams need imageio-ffmpeg: pip install 'anyskill[video]'"
        ) from e
    return imageio_ffmpeg


def encode_mp4(path: Path, frames: np.ndarray, fps: float, crf: int = 18, gop: int = 2) -> None:
    """Encode ``frames [T, H, W, 3] uint8`` to ``path`` (not atomic; callers rename)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got shape {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p video needs even height and width, got {h}x{w}")
    writer = _ffmpeg().write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=None,
        output_params=["-crf", str(crf), "-g", str(gop), "-preset", "veryfast", "-f", "mp4"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(frame)
    writer.close()


def decode_mp4(path: Path) -> np.ndarray:
    """All frames ``[T, H, W, 3] uint8`` of an MP4 file."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(path, "video file is missing", "re-record or restore the file")
    try:
        gen = _ffmpeg().read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in gen]
    except (RuntimeError, OSError, StopIteration) as e:
        raise CorruptFileError(path, f"cannot decode video ({e})") from e
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def decode_range(path: Path, from_timestamp: float, length: int, fps: float) -> np.ndarray:
    """``length`` frames starting at ``from_timestamp`` seconds of ``path``."""
    frames = decode_mp4(path)
    start = int(round(from_timestamp * fps))
    out = frames[start : start + length]
    if len(out) != length:
        raise CorruptFileError(
            path,
            f"expected {length} frames from t={from_timestamp:.3f}s, decoded {len(out)}",
            "the video is truncated; re-record the episode",
        )
    return out
