"""Point-mass mazes in pure JAX.

A 2-D point robot with a square collision body of half-size ``radius`` moves in a grid of
walls. The action is an acceleration command in [-1, 1]^2; velocity is limited to
``max_speed``; collisions are swept per axis (x first, then y) against the grid, so the body
never enters a wall cell, whatever the speed (see ``_sweep_axis``).

Layouts come from D4RL as used by JaxGCRL's ``simple_*_maze`` environments: cells are 4.0
units wide, the start cell ``r`` is the origin, x grows with the row index and y with the
column index (D4RL's convention), and success means being within 0.5 of the goal.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.envs.base import Env
from anyskill.names import unknown_name

R, G = "r", "g"

# 1 = wall, r = start cell, g = goal cell, 0 = free (no goals there).
ARENA = [
    [1, 1, 1, 1, 1],
    [1, G, G, G, 1],
    [1, G, R, G, 1],
    [1, G, G, G, 1],
    [1, 1, 1, 1, 1],
]
U_MAZE = [[1, 1, 1, 1, 1], [1, R, G, G, 1], [1, 1, 1, G, 1], [1, G, G, G, 1], [1, 1, 1, 1, 1]]
U_MAZE_EVAL = [[1, 1, 1, 1, 1], [1, R, 0, 0, 1], [1, 1, 1, 0, 1], [1, G, G, G, 1], [1, 1, 1, 1, 1]]
BIG_MAZE = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, R, G, 1, 1, G, G, 1],
    [1, G, G, 1, G, G, G, 1],
    [1, 1, G, G, G, 1, 1, 1],
    [1, G, G, 1, G, G, G, 1],
    [1, G, 1, G, G, 1, G, 1],
    [1, G, G, G, 1, G, G, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
BIG_MAZE_EVAL = [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, R, 0, 1, 1, G, G, 1],
    [1, 0, 0, 1, 0, G, G, 1],
    [1, 1, 0, 0, 0, 1, 1, 1],
    [1, 0, 0, 1, 0, 0, 0, 1],
    [1, 0, 1, G, 0, 1, G, 1],
    [1, 0, G, G, 1, G, G, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
]
HARDEST_MAZE = [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [1, R, G, G, G, 1, G, G, G, G, G, 1],
    [1, G, 1, 1, G, 1, G, 1, G, 1, G, 1],
    [1, G, G, G, G, G, G, 1, G, G, G, 1],
    [1, G, 1, 1, 1, 1, G, 1, 1, 1, G, 1],
    [1, G, G, 1, G, 1, G, G, G, G, G, 1],
    [1, 1, G, 1, G, 1, G, 1, G, 1, 1, 1],
    [1, G, G, 1, G, G, G, 1, G, G, G, 1],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
]


def _far_goals(layout: list[list], min_cells: int) -> list[list]:
    """Keep only goal cells at least ``min_cells`` steps (BFS) from the start: evaluation on
    far goals only, for a layout that has no hand-made eval variant."""
    grid = np.array([[1 if c == 1 else 0 for c in row] for row in layout])
    (start,) = [(i, j) for i, row in enumerate(layout) for j, c in enumerate(row) if c == R]
    dist = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for i, j in frontier:
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                c = (i + di, j + dj)
                if grid[c] == 0 and c not in dist:
                    dist[c] = dist[(i, j)] + 1
                    nxt.append(c)
        frontier = nxt
    out = [list(row) for row in layout]
    for i, row in enumerate(layout):
        for j, c in enumerate(row):
            if c == G and dist.get((i, j), 0) < min_cells:
                out[i][j] = 0
    return out


#: name -> (layout, episode_length). Episode lengths give a full-speed robot several times
#: the shortest path to the farthest goal, so time-at-goal has room to grow.
LAYOUTS: dict[str, tuple[list[list], int]] = {
    "arena": (ARENA, 50),
    "arena-eval": (_far_goals(ARENA, 2), 50),
    "u": (U_MAZE, 100),
    "u-eval": (U_MAZE_EVAL, 100),
    "big": (BIG_MAZE, 200),
    "big-eval": (BIG_MAZE_EVAL, 200),
    "hardest": (HARDEST_MAZE, 300),
    "hardest-eval": (_far_goals(HARDEST_MAZE, 8), 300),
}


@struct.dataclass
class PointState:
    """pos: [2] position (world units); vel: [2] velocity (units/s)."""

    pos: jax.Array
    vel: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class PointMaze(Env):
    """A velocity-limited point robot in a walled maze.

    Observation ``[x, y, vx, vy]``; goal ``[x, y]`` (``goal_indices = (0, 1)``); action an
    acceleration command in [-1, 1]^2 scaled by ``accel``.
    """

    layout_name: str = "u"
    cell_size: float = 4.0
    radius: float = 0.25
    max_speed: float = 8.0
    accel: float = 40.0
    damping: float = 2.0
    control_hz: float = 10.0
    success_threshold: float = 0.5
    episode_length: int = 0  # 0 = the layout's default
    start_noise: float = 0.1

    obs_dim = 4
    goal_dim = 2
    action_dim = 2
    goal_indices = (0, 1)

    def __post_init__(self):
        if self.layout_name not in LAYOUTS:
            raise unknown_name("maze layout", self.layout_name, LAYOUTS)
        layout, default_len = LAYOUTS[self.layout_name]
        if self.episode_length <= 0:
            object.__setattr__(self, "episode_length", default_len)
        if not 0 < self.radius < self.cell_size / 2:
            raise ValueError(
                f"radius must be in (0, cell_size/2) = (0, {self.cell_size / 2}), "
                f"got radius={self.radius}"
            )
        # The sweep checks only the neighbouring cell: a step must not span a whole free cell.
        max_step = self.max_speed / self.control_hz
        free_width = self.cell_size - 2 * self.radius
        if max_step >= free_width:
            raise ValueError(
                f"max_speed={self.max_speed} is too fast for cell_size={self.cell_size}, "
                f"radius={self.radius}, control_hz={self.control_hz}: one step moves up to "
                f"max_speed / control_hz = {max_step} units, which must be < "
                f"cell_size - 2*radius = {free_width}. Use max_speed < "
                f"{free_width * self.control_hz} or raise control_hz."
            )
        walls = np.array([[c == 1 for c in row] for row in layout], dtype=bool)
        starts = [(i, j) for i, row in enumerate(layout) for j, c in enumerate(row) if c == R]
        goals = [(i, j) for i, row in enumerate(layout) for j, c in enumerate(row) if c == G]
        if len(starts) != 1 or not goals:
            raise ValueError(f"layout {self.layout_name!r} needs one 'r' cell and >= 1 'g' cell")
        object.__setattr__(self, "walls", walls)
        object.__setattr__(self, "start_cell", starts[0])
        object.__setattr__(self, "goal_cells", np.array(goals, dtype=np.int32))
        object.__setattr__(self, "name", f"pointmaze-{self.layout_name}")

    # ---- coordinates --------------------------------------------------------------------
    # World coordinates put the start cell's centre at the origin; grid coordinates u (rows)
    # and v (columns) put cell (i, j) at [i, i+1) x [j, j+1).
    def cell_center(self, cells: jax.Array) -> jax.Array:
        """World position of the centre of integer cells ``[..., 2]``."""
        r = jnp.asarray(self.start_cell, jnp.float32)
        return (jnp.asarray(cells, jnp.float32) - r) * self.cell_size

    def to_grid(self, pos: jax.Array) -> jax.Array:
        r = jnp.asarray(self.start_cell, jnp.float32)
        return pos / self.cell_size + r + 0.5

    def to_world(self, uv: jax.Array) -> jax.Array:
        r = jnp.asarray(self.start_cell, jnp.float32)
        return (uv - r - 0.5) * self.cell_size

    @property
    def free_cells(self) -> np.ndarray:
        return np.argwhere(~self.walls)

    # ---- dynamics -----------------------------------------------------------------------
    def _reset_physics(self, key):
        # One draw of three uniforms in [0, 1): two for the start noise, one for the goal cell.
        # Auto-reset runs this on every step of every env (under vmap it is a select, not a
        # branch), and threefry hashes dominate the step cost: split + uniform + randint took
        # 8 hashes, this takes 3 for the same distributions.
        u = jax.random.uniform(key, (3,))
        noise = (2.0 * u[:2] - 1.0) * self.start_noise
        pos = self.cell_center(jnp.asarray(self.start_cell)) + noise
        n_goals = len(self.goal_cells)
        idx = jnp.minimum(jnp.floor(u[2] * n_goals).astype(jnp.int32), n_goals - 1)
        goal = self.cell_center(jnp.asarray(self.goal_cells)[idx])
        return PointState(pos=pos, vel=jnp.zeros(2, jnp.float32)), goal

    def _step_physics(self, physics: PointState, action):
        dt = self.dt
        # Semi-implicit Euler with linear damping, then the speed limit.
        vel = physics.vel + dt * (self.accel * action - self.damping * physics.vel)
        # |vel| written out: XLA:CPU reduces a size-2 axis (jnp.linalg.norm) ~10x slower.
        speed = jnp.sqrt(vel[0] ** 2 + vel[1] ** 2)
        vel = vel * jnp.minimum(1.0, self.max_speed / jnp.maximum(speed, 1e-8))
        uv = self.to_grid(physics.pos)
        du = vel * dt / self.cell_size
        u, hit_u = _sweep_axis(self.walls, uv[0], uv[1], du[0], self.radius / self.cell_size, 0)
        v, hit_v = _sweep_axis(self.walls, uv[1], u, du[1], self.radius / self.cell_size, 1)
        pos = self.to_world(jnp.stack([u, v]))
        # A collision is inelastic: the blocked velocity component is lost.
        vel = vel * jnp.stack([1.0 - hit_u, 1.0 - hit_v])
        return PointState(pos=pos.astype(jnp.float32), vel=vel.astype(jnp.float32))

    def observe(self, physics: PointState):
        return jnp.concatenate([physics.pos, physics.vel]).astype(jnp.float32)


# Gap kept between the body and a wall face after a blocked move, in cells. Much larger than
# float32 rounding at maze scale (~1e-6), much smaller than anything visible.
_SKIN = 1e-4


def _is_wall(walls: np.ndarray, i: jax.Array, j: jax.Array) -> jax.Array:
    """``walls[i, j]`` for in-range integer arrays ``i``, ``j``, without a gather.

    The static grid is packed row-major into 32-bit words (cell k = i * n_cols + j is bit
    k % 32 of word k // 32), so a lookup is a select among a few constants and a shift.
    XLA:CPU gathers cost more than the rest of the physics step together.
    """
    bytes_ = np.packbits(walls.ravel(), bitorder="little")
    words = np.pad(bytes_, (0, -len(bytes_) % 4)).view("<u4")
    k = (i * walls.shape[1] + j).astype(jnp.uint32)
    word = jnp.uint32(words[0])
    for w in range(1, len(words)):
        word = jnp.where((k >> 5) == w, jnp.uint32(words[w]), word)
    return ((word >> (k & 31)) & 1) == 1


def _sweep_axis(walls: np.ndarray, a, b, da, half, axis):
    """Move a square body (half-size ``half``, grid units) by ``da`` along one grid axis.

    ``a`` is the coordinate along the moving axis, ``b`` along the other one. The body spans
    rows ``floor(b - half) .. floor(b + half)`` of the other axis (at most two, since
    ``half < 0.5``). Because ``|da| < 1 - 2*half`` (checked in ``PointMaze``), the leading
    face crosses at most one cell boundary; if any cell just beyond that boundary, in any
    spanned row, is a wall, the face stops ``_SKIN`` short of the boundary. Returns the new
    coordinate and 1.0 if blocked, else 0.0.
    """
    direction = jnp.sign(da)
    lead = a + direction * half

    # The cell just behind the leading face. A face lying exactly on a cell boundary belongs
    # to the cell the body is in, not to the one it touches: ceil - 1 moving +, floor moving -
    # (``floor`` alone would let a body touching a wall from below pass through it).
    def face_cell(x):
        return jnp.where(direction > 0, jnp.ceil(x) - 1.0, jnp.floor(x))

    cell_now = face_cell(lead)
    cell_new = face_cell(lead + da)
    crossed = cell_new != cell_now
    lo = jnp.floor(b - half + _SKIN).astype(jnp.int32)
    hi = jnp.floor(b + half - _SKIN).astype(jnp.int32)
    c = jnp.clip(cell_new.astype(jnp.int32), 0, walls.shape[axis] - 1)
    n_other = walls.shape[1 - axis]
    lo = jnp.clip(lo, 0, n_other - 1)
    hi = jnp.clip(hi, 0, n_other - 1)
    if axis == 0:
        blocked = _is_wall(walls, c, lo) | _is_wall(walls, c, hi)
    else:
        blocked = _is_wall(walls, lo, c) | _is_wall(walls, hi, c)
    blocked = blocked & crossed
    # Boundary that would be crossed: the upper face of cell_now moving +, its lower face -.
    boundary = jnp.where(direction > 0, cell_now + 1.0, cell_now)
    stopped = boundary - direction * (half + _SKIN)
    return jnp.where(blocked, stopped, a + da), blocked.astype(jnp.float32)
