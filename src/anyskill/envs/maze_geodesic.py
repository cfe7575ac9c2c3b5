"""True shortest-path (geodesic) distances in a :class:`~anyskill.envs.maze.PointMaze`.

The free space is cut into ``resolution`` x ``resolution`` sub-cells per maze cell; moves go
to the 8 neighbouring free sub-cells (a diagonal only when both sides are free), and all-pairs
path lengths come from ``scipy.sparse.csgraph``. A position maps to its sub-cell, so
distances are exact up to one sub-cell (``cell_size / resolution`` world units).

Used as a ground truth: the reference distance of planner tests, and the yardstick of how
well a learned distance orders pairs of states (``benchmarks/planning.py``).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csgraph, csr_matrix

from anyskill.envs.maze import PointMaze


class MazeGeodesic:
    """Geodesic distance in world units between positions of ``maze``. Also a
    :class:`~anyskill.policies.planning.Distance` (states and goals both encode to their
    positions), so a planner can search over the true distances."""

    def __init__(self, maze: PointMaze, resolution: int = 4, clearance: float = 0.0):
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.maze, self.resolution = maze, resolution
        free = np.repeat(np.repeat(~maze.walls, resolution, axis=0), resolution, axis=1)
        if clearance > 0:
            # paths keep ``clearance`` (world units, L-inf like the square body) from walls:
            # the distance of a controller that cannot hug corners
            margin = clearance / maze.cell_size
            for i, j in np.argwhere(free):
                u, v = (i + 0.5) / resolution, (j + 0.5) / resolution
                ci, cj = int(u), int(v)
                for wi in range(ci - 1, ci + 2):
                    for wj in range(cj - 1, cj + 2):
                        if not maze.walls[wi, wj]:
                            continue
                        du = max(wi - u, 0.0, u - (wi + 1))
                        dv = max(wj - v, 0.0, v - (wj + 1))
                        if max(du, dv) < margin:
                            free[i, j] = False
        rows, cols = free.shape
        index = -np.ones(free.shape, np.int64)
        index[free] = np.arange(int(free.sum()))
        src, dst, w = [], [], []
        step = maze.cell_size / resolution
        for i, j in np.argwhere(free):
            for di, dj in ((0, 1), (1, 0), (1, 1), (1, -1), (0, -1), (-1, 0), (-1, -1), (-1, 1)):
                u, v = i + di, j + dj
                if not (0 <= u < rows and 0 <= v < cols) or not free[u, v]:
                    continue
                if di and dj and not (free[i + di, j] and free[i, j + dj]):
                    continue  # no corner cutting
                src.append(index[i, j])
                dst.append(index[u, v])
                w.append(step * np.hypot(di, dj))
        n = int(free.sum())
        graph = csr_matrix((w, (src, dst)), shape=(n, n))
        self.table = csgraph.shortest_path(graph, method="D", directed=False)
        self._index, self._free = index, free

    def cell_of(self, positions: np.ndarray) -> np.ndarray:
        """Sub-cell index of world positions ``[..., 2]`` (the nearest free one when a
        position lies in a wall's sub-cell, which a body of nonzero radius never does)."""
        pos = np.asarray(positions, np.float64)[..., :2]
        uv = (pos / self.maze.cell_size + np.asarray(self.maze.start_cell) + 0.5) * self.resolution
        ij = np.floor(uv).astype(np.int64)
        ij[..., 0] = np.clip(ij[..., 0], 0, self._free.shape[0] - 1)
        ij[..., 1] = np.clip(ij[..., 1], 0, self._free.shape[1] - 1)
        idx = self._index[ij[..., 0], ij[..., 1]]
        bad = idx < 0
        if np.any(bad):
            free_ij = np.argwhere(self._free)
            for k in zip(*np.nonzero(bad), strict=True):
                near = np.argmin(np.sum((free_ij + 0.5 - uv[k]) ** 2, axis=1))
                idx[k] = self._index[tuple(free_ij[near])]
        return idx

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Geodesic distances between positions ``a[k]`` and ``b[k]`` (paired)."""
        return self.table[self.cell_of(a), self.cell_of(b)]

    # ---- the planner's Distance protocol ---------------------------------------------
    def encode_states(self, states: np.ndarray) -> np.ndarray:
        return self.cell_of(np.asarray(states)[:, list(self.maze.goal_indices)])

    def encode_goals(self, goals: np.ndarray) -> np.ndarray:
        return self.cell_of(goals)

    def between(self, states: np.ndarray, goals: np.ndarray) -> np.ndarray:
        return self.table[np.ix_(states, goals)]
