"""Draw point-maze rollouts as RGB frames, tile several rollouts, and save them as video.

Pure numpy + Pillow: rendering runs outside ``jit`` on positions copied to the host, so it
never costs a compile and works the same for any backend.

Image layout follows the grid: row ``i`` of the layout is drawn at the ``i``-th band from the
top and column ``j`` at the ``j``-th band from the left, so the picture looks like the layout
as written in :mod:`anyskill.envs.maze` (world x grows downwards, world y to the right).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anyskill.envs.maze import PointMaze

FLOOR = (246, 245, 240)
WALL = (58, 63, 75)
GOAL = (46, 160, 67)
ROBOT = (31, 100, 200)
TRAIL = ROBOT
#: supersampling factor: shapes are drawn this much larger and box-filtered down, which
#: anti-aliases the goal circle and the trail while keeping cell edges pixel-exact.
_SUPERSAMPLE = 2


def cell_pixels(env: PointMaze, size: int) -> int:
    """Pixels per grid cell: the longer side of the image is ``size`` rounded down to a whole
    number of cells, so wall edges fall on pixel boundaries."""
    return max(1, size // max(env.walls.shape))


def frame_shape(env: PointMaze, size: int = 256) -> tuple[int, int]:
    """``(H, W)`` of the frames ``render_maze_frames(env, ..., size)`` returns."""
    px = cell_pixels(env, size)
    return env.walls.shape[0] * px, env.walls.shape[1] * px


def world_to_pixel(env: PointMaze, pos: np.ndarray, size: int = 256) -> np.ndarray:
    """World positions ``[..., 2]`` -> continuous image coordinates ``[..., 2]`` as
    ``(column, row)`` pixels, i.e. ``(x_img, y_img)``; pixel ``(c, r)`` covers
    ``[c, c+1) x [r, r+1)``."""
    pos = np.asarray(pos, np.float64)
    uv = pos / env.cell_size + np.asarray(env.start_cell, np.float64) + 0.5
    return uv[..., ::-1] * cell_pixels(env, size)


def _background(env: PointMaze, px: int) -> Image.Image:
    h, w = env.walls.shape
    grid = np.where(env.walls[..., None], np.array(WALL, np.uint8), np.array(FLOOR, np.uint8))
    img = np.repeat(np.repeat(grid, px, axis=0), px, axis=1)
    assert img.shape[:2] == (h * px, w * px)
    return Image.fromarray(img.astype(np.uint8))


def _blend(colour: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    """``colour`` at opacity ``alpha`` over the floor."""
    return tuple(int(round(f + alpha * (c - f))) for c, f in zip(colour, FLOOR, strict=True))


def render_maze_frames(
    env: PointMaze,
    positions: np.ndarray,
    goals: np.ndarray,
    size: int = 256,
    trail_length: int = 30,
) -> np.ndarray:
    """Draw a trajectory of a point maze, one frame per position.

    Args:
      env: the maze (its walls, radius and success threshold are drawn to scale).
      positions: ``[T, 2]`` world positions of the robot (e.g. ``states.obs[:, :2]``).
      goals: ``[T, 2]`` goal per frame, or ``[2]`` for one goal throughout.
      size: length in pixels of the longer image side (rounded down to whole cells).
      trail_length: how many past positions the fading trail shows.

    Returns:
      ``[T, H, W, 3]`` uint8 frames with ``(H, W) = frame_shape(env, size)``: walls, the
      goal (a disc of radius ``success_threshold``), the trail and the robot (its square body).
      A jump longer than one step can move (an auto-reset to a new start) cuts the trail.
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[-1] != 2:
        raise ValueError(f"positions must have shape [T, 2], got {positions.shape}")
    n_frames = positions.shape[0]
    goals = np.asarray(goals, np.float64)
    if goals.shape == (2,):
        goals = np.broadcast_to(goals, (n_frames, 2))
    if goals.shape != (n_frames, 2):
        raise ValueError(
            f"goals must have shape [2] or [T, 2] = [{n_frames}, 2], got {goals.shape}"
        )

    s = _SUPERSAMPLE
    px = cell_pixels(env, size)
    scale = px * s / env.cell_size  # hi-res pixels per world unit
    background = _background(env, px * s)
    pix = world_to_pixel(env, positions, size) * s
    goal_pix = world_to_pixel(env, goals, size) * s
    # Consecutive positions farther apart than one step can move are an auto-reset.
    max_step = env.max_speed / env.control_hz
    jumps = np.linalg.norm(np.diff(positions, axis=0), axis=-1) > max_step * 1.01 + 1e-6
    episode = np.concatenate([[0], np.cumsum(jumps)])

    goal_r = env.success_threshold * scale
    robot_r = env.radius * scale
    trail_width = max(1, round(0.6 * robot_r))
    frames = np.empty((n_frames, *frame_shape(env, size), 3), np.uint8)
    for t in range(n_frames):
        img = background.copy()
        draw = ImageDraw.Draw(img)
        gx, gy = goal_pix[t]
        draw.ellipse([gx - goal_r, gy - goal_r, gx + goal_r, gy + goal_r], fill=_blend(GOAL, 0.35))
        draw.ellipse(
            [gx - goal_r, gy - goal_r, gx + goal_r, gy + goal_r], outline=GOAL, width=max(1, s)
        )
        # Oldest segments first, so newer (darker) ones are drawn on top.
        first = max(0, t - trail_length)
        for k in range(first, t):
            if episode[k] != episode[t]:
                continue
            alpha = 0.8 * (k + 1 - first) / (t - first)
            draw.line(
                [tuple(pix[k]), tuple(pix[k + 1])], fill=_blend(TRAIL, alpha), width=trail_width
            )
        x, y = pix[t]
        draw.rectangle([x - robot_r, y - robot_r, x + robot_r, y + robot_r], fill=ROBOT)
        frames[t] = np.asarray(img.reduce(s))
    return frames


def tile_frames(videos: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Put several videos ``[T_i, H, W, 3]`` side by side in a grid with ``cols`` columns.

    Shorter videos hold their last frame; tiles are separated by ``pad`` white pixels.
    Returns ``[max T_i, rows * (H + pad) - pad, cols * (W + pad) - pad, 3]`` uint8.
    """
    if not videos:
        raise ValueError("tile_frames needs at least one video")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    shapes = {v.shape[1:] for v in videos}
    if len(shapes) != 1 or any(v.ndim != 4 or v.shape[-1] != 3 for v in videos):
        raise ValueError(
            f"all videos must be [T, H, W, 3] with the same H, W; got {[v.shape for v in videos]}"
        )
    ((h, w, _),) = shapes
    cols = min(cols, len(videos))
    rows = -(-len(videos) // cols)
    n_frames = max(v.shape[0] for v in videos)
    out = np.full((n_frames, rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for i, video in enumerate(videos):
        r, c = divmod(i, cols)
        held = np.concatenate([video, np.repeat(video[-1:], n_frames - len(video), axis=0)])
        out[:, r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = held
    return out


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Write ``[T, H, W, 3]`` uint8 frames to ``path`` (.gif, or .mp4 with imageio-ffmpeg).

    The file appears atomically (written next to ``path``, then renamed). Returns the path.
    """
    import imageio.v2 as imageio
    import imageio.v3 as iio

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"cannot save video as {path.name!r}: use a .gif or .mp4 path")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise RuntimeError(
            f"saving {path} as MP4 needs imageio-ffmpeg: `pip install imageio-ffmpeg` "
            "(or `pip install anyskill[video]`), or save as .gif instead"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory (so the rename is atomic) and same suffix (imageio picks the format by it).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")
    try:
        if suffix == ".gif":
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            # H.264 in yuv420p needs even sides: pad with white rather than let the writer resize.
            h, w = frames.shape[1:3]
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
            with warnings.catch_warnings():
                # imageio-ffmpeg starts ffmpeg with fork + exec, which JAX's fork warning
                # cannot tell apart from a bare fork; nothing runs JAX in the child.
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
                writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, macro_block_size=2)
                with writer:
                    for frame in frames:
                        writer.append_data(frame)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


__all__ = [
    "render_maze_frames",
    "tile_frames",
    "save_video",
    "world_to_pixel",
    "frame_shape",
    "cell_pixels",
]
