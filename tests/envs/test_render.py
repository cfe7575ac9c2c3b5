"""The maze renderer draws walls, goal and robot where the geometry says, and saves videos."""

from __future__ import annotations

import importlib.util

import imageio.v3 as iio
import numpy as np
import pytest

from anyskill.envs import make
from anyskill.envs import render as render_mod
from anyskill.envs.render import (
    FLOOR,
    GOAL,
    ROBOT,
    WALL,
    frame_shape,
    render_maze_frames,
    save_video,
    tile_frames,
    world_to_pixel,
)


@pytest.fixture(scope="module")
def env():
    return make("pointmaze-u")


def u_path(n: int = 12) -> np.ndarray:
    """World positions along the top arm of the U (start cell (1, 1) is the origin)."""
    return np.stack([np.zeros(n), np.linspace(0.0, 8.0, n)], axis=-1)


def pixel(frame, env, pos, size=256):
    col, row = np.floor(world_to_pixel(env, pos, size)).astype(int)
    return tuple(int(c) for c in frame[row, col])


def test_shape_and_dtype(env):
    positions = u_path()
    frames = render_maze_frames(env, positions, goals=[8.0, 8.0], size=256)
    assert frames.dtype == np.uint8
    assert frames.shape == (len(positions), *frame_shape(env, 256), 3)
    assert frame_shape(env, 256) == (255, 255)  # 5 x 5 cells of 51 pixels
    # Non-square layouts keep their aspect ratio; the longer side is at most `size`.
    hardest = make("pointmaze-hardest")
    frames = render_maze_frames(hardest, np.zeros((2, 2)), np.zeros(2), size=200)
    assert frames.shape == (2, 9 * 16, 12 * 16, 3)


def test_walls_floor_goal_and_robot_colours(env):
    positions = u_path()
    goal = np.array([8.0, 0.0])  # centre of goal cell (3, 1), far from the path
    frames = render_maze_frames(env, positions, goal, size=256)
    px = 51
    for t in (0, len(positions) - 1):
        frame = frames[t]
        # Every pixel of a wall cell has the wall colour.
        for i, j in np.argwhere(env.walls):
            cell = frame[i * px : (i + 1) * px, j * px : (j + 1) * px]
            assert (cell == WALL).all(), (i, j)
        # Free cell (3, 3), away from path, goal and robot, is plain floor.
        assert (frame[3 * px + 5 : 4 * px - 5, 3 * px + 5 : 4 * px - 5] == FLOOR).all()
        # The robot's pixel (and its whole body, minus anti-aliased edges) is robot-coloured.
        assert pixel(frame, env, positions[t]) == ROBOT
        col, row = np.floor(world_to_pixel(env, positions[t])).astype(int)
        half = int(env.radius / env.cell_size * px) - 1
        body = frame[row - half : row + half + 1, col - half : col + half + 1]
        assert (body == ROBOT).all()
        # The goal disc (radius success_threshold) is drawn in goal colours around the goal.
        centre = pixel(frame, env, goal)
        assert centre != FLOOR and centre[1] > centre[0] and centre[1] > centre[2]
        rim = world_to_pixel(env, goal + [0.0, env.success_threshold * 0.9]).astype(int)
        assert tuple(frame[rim[1], rim[0]]) != FLOOR
        outside = world_to_pixel(env, goal + [0.0, env.success_threshold * 1.5]).astype(int)
        assert tuple(frame[outside[1], outside[0]]) == FLOOR
    assert GOAL != ROBOT


def test_pixel_mapping_follows_the_layout(env):
    """Row i of the layout is the i-th band from the top, column j the j-th from the left."""
    col, row = world_to_pixel(env, env.cell_center(np.array([3, 2])), 256)
    assert (col, row) == pytest.approx((2.5 * 51, 3.5 * 51))


def test_trail_fades_and_is_cut_at_resets(env):
    # Two episodes: along the top arm, then a jump back to the start (an auto-reset).
    positions = np.concatenate([u_path(12), [[0.0, 0.0], [0.0, 0.4]]])  # steps < max_step
    frames = render_maze_frames(env, positions, np.array([8.0, 0.0]), size=256)

    def trail_pixel(t, k):
        """Colour at frame t, midway between positions k and k + 1."""
        return np.asarray(pixel(frames[t], env, (positions[k] + positions[k + 1]) / 2), float)

    floor = np.asarray(FLOOR, float)
    # Within an episode: recent segments are darker (farther from the floor) than old ones.
    recent, old = trail_pixel(11, 9), trail_pixel(11, 1)
    assert np.abs(recent - floor).sum() > np.abs(old - floor).sum() > 0
    # After the reset, the first episode's trail is gone.
    assert tuple(trail_pixel(13, 5).astype(int)) == FLOOR


def test_bad_shapes_raise(env):
    with pytest.raises(ValueError, match=r"positions must have shape \[T, 2\]"):
        render_maze_frames(env, np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="goals must have shape"):
        render_maze_frames(env, np.zeros((3, 2)), np.zeros((2, 2)))


def test_tile_frames_layout_and_padding():
    a = np.full((3, 4, 5, 3), 10, np.uint8)
    b = np.full((2, 4, 5, 3), 20, np.uint8)
    c = np.full((3, 4, 5, 3), 30, np.uint8)
    tiled = tile_frames([a, b, c], cols=2, pad=1)
    assert tiled.shape == (3, 2 * 4 + 1, 2 * 5 + 1, 3)
    assert (tiled[:, :4, :5] == 10).all()
    assert (tiled[:, :4, 6:] == 20).all()  # b holds its last frame at t = 2
    assert (tiled[:, 5:, :5] == 30).all()
    assert (tiled[:, 5:, 6:] == 255).all()  # empty tile
    assert (tiled[:, 4, :] == 255).all() and (tiled[:, :, 5] == 255).all()  # gaps
    assert tile_frames([a], cols=4).shape == a.shape
    with pytest.raises(ValueError, match="same H, W"):
        tile_frames([a, np.zeros((3, 4, 6, 3), np.uint8)], cols=2)


def test_save_gif_roundtrip(tmp_path, env):
    frames = render_maze_frames(env, u_path(5), np.array([8.0, 0.0]), size=64)
    path = save_video(frames, tmp_path / "sub" / "rollout.gif", fps=5)
    assert path.exists() and not list(path.parent.glob(".*tmp*"))
    back = iio.imread(path, index=None)
    assert back.shape == frames.shape
    assert iio.immeta(path)["duration"] == 200


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None, reason="no ffmpeg")
def test_save_mp4(tmp_path, env):
    frames = render_maze_frames(env, u_path(5), np.array([8.0, 0.0]), size=128)
    assert frames.shape[1] % 2 == 1  # odd sides get padded for H.264
    path = save_video(frames, tmp_path / "rollout.mp4", fps=5)
    assert path.stat().st_size > 0


def test_save_video_errors(tmp_path, monkeypatch):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\.gif or \.mp4"):
        save_video(frames, tmp_path / "x.avi")
    with pytest.raises(ValueError, match="uint8"):
        save_video(frames.astype(np.float32), tmp_path / "x.gif")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        render_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "imageio_ffmpeg" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError, match=r"pip install imageio-ffmpeg.*\.gif"):
        save_video(frames, tmp_path / "x.mp4")
    assert not list(tmp_path.iterdir())


def test_render_rollouts_draws_each_episode_until_it_ends(env):
    """``anyskill render`` runs its episodes through the one rollout: a random policy on the
    maze, one tile per episode, one frame per step plus the position the episode ended on."""
    import jax

    from anyskill.envs import video

    short = make("pointmaze-u", episode_length=6)
    frames, summary = video.render_rollouts(
        short, video.builtin_policy(short, "random"), jax.random.key(0), episodes=2, size=64
    )
    assert frames.shape[0] == 6 + 1 and frames.dtype == np.uint8
    assert summary == {"env": "pointmaze-u", "episodes": 2, "steps": 6, "success": 0.0}
    with pytest.raises(ValueError, match="no scripted expert"):
        video.builtin_policy(short, "expert")
