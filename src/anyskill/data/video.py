"""Camera streams as MP4 (H.264, yuv420p) through imageio-ffmpeg's bundled ffmpeg.

Every frame ``i`` of an episode is presented at ``i / fps`` seconds, matching the episode's
``timestamp`` column, so LeRobot's decoder finds each frame by timestamp. A short GOP keeps
random access cheap (LeRobot encodes with ``g=2`` for the same reason). The encoding is
lossy: decoded pixels differ from the recorded ones by a few levels.

:func:`probe_mp4` reads a file's frame count and size from the MP4 boxes (ISO/IEC 14496-12)
without decoding, so ``anyskill data validate`` can check every video cheaply; a failed
decode is reported as one line naming the file, with ffmpeg's log reduced to its diagnosis.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import numpy as np

from anyskill.data.format import CorruptFileError

_FIX = "the video is corrupt or truncated; re-record the episode or restore the file"


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
    probe_mp4(path)  # a truncated or foreign file gets a precise message before ffmpeg runs
    try:
        gen = _ffmpeg().read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in gen]
    except (RuntimeError, OSError, StopIteration) as e:
        raise CorruptFileError(path, f"cannot decode video: {ffmpeg_reason(e)}", _FIX) from e
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


#: ffmpeg log lines that say what went wrong (the rest is banner and stream listing) ...
_DIAGNOSIS = re.compile(
    r"error|invalid|not found|corrupt|truncat|no such|failed|does not contain|missing", re.I
)
#: ... and those that only report the consequences of an earlier one.
_CONSEQUENCE = re.compile(
    r"^(Error opening|Conversion failed|Task finished|Terminating thread|Nothing was written)"
)


def ffmpeg_reason(e: BaseException) -> str:
    """The one line of an imageio-ffmpeg error that says why: ffmpeg prints its banner,
    configuration and streams around the problem (17 lines and more for a corrupt file)."""
    head, _, log = str(e).partition("=== stderr ===")
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in log.splitlines()]
    found = [ln for ln in lines if _DIAGNOSIS.search(ln)]
    cause = [ln for ln in found if not _CONSEQUENCE.match(ln)]
    reason = cause[:1] or found[-1:] or [ln.strip() for ln in head.splitlines() if ln.strip()]
    return reason[0] if reason else type(e).__name__


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    """What an MP4's boxes say about its first video track."""

    frames: int | None
    """Sample (frame) count from ``stsz``; None for fragmented files that keep it elsewhere."""
    width: int | None
    height: int | None


def probe_mp4(path: Path) -> VideoProbe:
    """Frame count and coded size of the first video track, from the container alone.

    Every top-level box must fit in the file (a truncated file fails here, wherever its
    ``moov`` box is), and a ``moov`` box with a video track must exist. Raises
    :class:`CorruptFileError` naming the file; a damaged picture inside an intact container
    is only found by decoding (``anyskill data validate --deep``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            moov = None
            pos = 0
            while pos < size:
                f.seek(pos)
                head = f.read(16)
                n, kind, hdr = _box_header(path, head, pos)
                if n == 0:  # the last box runs to the end of the file
                    n = size - pos
                if n < hdr or pos + n > size:
                    raise CorruptFileError(
                        path,
                        f"not a valid MP4: box {kind!r} at byte {pos} has {n} bytes, past the "
                        f"end of the file ({size} bytes)",
                        _FIX,
                    )
                if kind == "moov":
                    f.seek(pos + hdr)
                    moov = f.read(n - hdr)
                pos += n
    except OSError as e:
        raise CorruptFileError(path, f"cannot read video ({e.strerror or e})", _FIX) from e
    if moov is None:
        raise CorruptFileError(path, "not a valid MP4: it has no 'moov' box", _FIX)
    for trak in _children(path, moov, "trak"):
        mdia = next(_children(path, trak, "mdia"), None)
        hdlr = next(_children(path, mdia, "hdlr"), b"") if mdia is not None else b""
        if hdlr[8:12] != b"vide":
            continue
        stbl = next(_children(path, _child(path, mdia, "minf"), "stbl"), b"")
        stsz = next(_children(path, stbl, "stsz"), None)
        frames = (
            struct.unpack(">I", stsz[8:12])[0] if stsz is not None and len(stsz) >= 12 else None
        )
        stsd = next(_children(path, stbl, "stsd"), b"")
        width = height = None
        if len(stsd) >= 8 + 36:  # version/flags, entry count, then a visual sample entry
            width, height = struct.unpack(">HH", stsd[8 + 32 : 8 + 36])
        if frames == 0 and b"mvex" in moov:
            frames = None  # fragmented MP4: the samples are counted in the fragments
        return VideoProbe(frames, width, height)
    raise CorruptFileError(path, "not a valid MP4: it has no video track", _FIX)


def _box_header(path: Path, head: bytes, pos: int) -> tuple[int, str, int]:
    if len(head) < 8:
        raise CorruptFileError(path, f"not a valid MP4: truncated box header at byte {pos}", _FIX)
    n, kind = struct.unpack(">I4s", head[:8])
    name = kind.decode("latin-1")
    if n == 1:
        if len(head) < 16:
            raise CorruptFileError(path, f"not a valid MP4: truncated box at byte {pos}", _FIX)
        return struct.unpack(">Q", head[8:16])[0], name, 16
    return n, name, 8


def _children(path: Path, buf: bytes | None, kind: str):
    """Payloads of the child boxes of type ``kind`` in ``buf`` (a box's payload)."""
    pos = 0
    while buf is not None and pos + 8 <= len(buf):
        n, name, hdr = _box_header(path, buf[pos : pos + 16], pos)
        n = len(buf) - pos if n == 0 else n
        if n < hdr or pos + n > len(buf):
            raise CorruptFileError(
                path, f"not a valid MP4: box {name!r} overruns its parent box", _FIX
            )
        if name == kind:
            yield buf[pos + hdr : pos + n]
        pos += n


def _child(path: Path, buf: bytes | None, kind: str) -> bytes | None:
    return next(_children(path, buf, kind), None)


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
