"""Search before acting: a goal-conditioned policy that follows waypoints found by shortest
paths over a graph of states weighted by a learned distance.

Search on the Replay Buffer (Eysenbach, Salakhutdinov & Levine, NeurIPS 2019): the nodes are
states the agent has visited; the edge ``i -> j`` weighs ``d(s_i, g_j)``, a temporal distance
(here: any :class:`Distance`), and is dropped when longer than ``cutoff`` — a learned distance
is trusted only at short range, where the data covers it (long "edges" are the wormholes
through walls that make a flat policy fail). All-pairs shortest paths are computed once
(``scipy.sparse.csgraph``); at decision time the current state and the goal are connected to
the graph, and the inner policy is asked to reach the next waypoint instead of the goal.

Nothing here imports JAX or an algorithm: the distance and the inner policy bring their own.
The graph code sees only node states, their goal projections and a :class:`Distance`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import numpy as np

from anyskill.policies.base import GOAL, STATE, Batch, ChunkPolicy, Policy

#: ``succ[i, j]`` of a pair with no path (scipy's value)
NO_PATH = -9999


@runtime_checkable
class Distance(Protocol):
    """A (possibly asymmetric) distance from states to goals, in two stages so that the
    graph's node encodings are computed once: ``between(encode_states(S), encode_goals(G))``
    is the ``[len(S), len(G)]`` matrix of distances from each state to each goal (>= 0)."""

    def encode_states(self, states: np.ndarray) -> Any:
        """Encode ``[M, obs_dim]`` states (whatever ``between`` reads)."""
        ...

    def encode_goals(self, goals: np.ndarray) -> Any:
        """Encode ``[N, goal_dim]`` goals (whatever ``between`` reads)."""
        ...

    def between(self, states: Any, goals: Any) -> np.ndarray:
        """``[M, N]`` float distances from encoded states to encoded goals."""
        ...


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """Graph search over a learned distance (Search on the Replay Buffer)."""

    nodes: int = 2000
    """Graph nodes: states chosen from the run's replay buffer by farthest-point sampling of
    their goal projection (positions), so the graph covers the visited space evenly."""
    cutoff: float = 0.0
    """Longest edge kept, in the distance's units; 0: automatic, the median over nodes of
    the distance to their ``neighbors``-th nearest node. Longer edges are not trusted:
    learned distances are accurate only at short range."""
    neighbors: int = 50
    """With ``cutoff`` 0: the typical node keeps edges to about this many nodes."""
    waypoint_min: float = 0.25
    """Nodes on the route nearer to the current state than this fraction of the way from
    the nearest node's distance to the cutoff count as reached; the next waypoint is the
    first node after them."""
    replan_every: int = 5
    """Steps between replans (a new goal also replans); 1 replans at every step."""

    def __post_init__(self):
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or self.nodes < 2:
            raise ValueError(f"planner nodes must be an integer >= 2, got {self.nodes!r}")
        if not (np.isfinite(self.cutoff) and self.cutoff >= 0):
            raise ValueError(
                f"planner cutoff must be a finite number >= 0 (0: automatic), got {self.cutoff}"
            )
        if not 1 <= self.neighbors < self.nodes:
            raise ValueError(
                f"planner neighbors must be in 1..nodes-1 ({self.nodes - 1}), got {self.neighbors}"
            )
        if not 0 <= self.waypoint_min < 1:
            raise ValueError(
                f"planner waypoint_min is a fraction of the cutoff in [0, 1), got "
                f"{self.waypoint_min}"
            )
        if self.replan_every < 1:
            raise ValueError(f"planner replan_every must be >= 1, got {self.replan_every}")


def farthest_point_sample(points: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` rows of ``points`` ``[N, k]``, each the farthest (Euclidean) from those
    already chosen, starting from a random row: an even cover of the points' extent (Gonzalez
    1985). All rows when ``n >= N``."""
    points = np.asarray(points, np.float64)
    count = len(points)
    if n >= count:
        return np.arange(count)
    chosen = np.empty(n, np.int64)
    chosen[0] = np.random.default_rng(seed).integers(count)
    nearest = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    for k in range(1, n):
        chosen[k] = int(np.argmax(nearest))
        nearest = np.minimum(nearest, np.sum((points - points[chosen[k]]) ** 2, axis=1))
    return chosen


def auto_cutoff(w: np.ndarray, neighbors: int) -> float:
    """The median over nodes of the distance to their ``neighbors``-th nearest other node
    (``w[i, j]``: from node i to node j): a radius that keeps the graph's degree near
    ``neighbors`` whatever the distance's units."""
    off = np.where(np.eye(len(w), dtype=bool), np.inf, w)
    k = min(neighbors, len(w) - 1) - 1
    return float(np.median(np.partition(off, k, axis=1)[:, k]))


@dataclasses.dataclass(frozen=True, eq=False)
class WaypointGraph:
    """Nodes, kept edges and all-pairs shortest paths. ``dist[i, j]`` is the length of the
    shortest path from node ``i`` to node ``j`` (inf without one) and ``succ[i, j]`` the node
    after ``i`` on it (``succ[i, i] == i``; :data:`NO_PATH` without one)."""

    states: np.ndarray
    """``[n, obs_dim]`` node states."""
    goals: np.ndarray
    """``[n, goal_dim]`` their goal projections: what the inner policy is asked to reach."""
    edges: np.ndarray
    """``[n, n]`` distance of every kept edge ``i -> j``, inf where dropped (and on the
    diagonal)."""
    dist: np.ndarray
    """``[n, n]`` shortest-path lengths."""
    succ: np.ndarray
    """``[n, n]`` int32: next node on the shortest path from ``i`` to ``j``."""
    cutoff: float
    """Longest kept edge."""
    state_code: Any = None
    """``distance.encode_states(states)``, kept to connect a goal to the graph."""
    goal_code: Any = None
    """``distance.encode_goals(goals)``, kept to connect a state to the graph."""

    @property
    def num_nodes(self) -> int:
        return len(self.states)

    @property
    def num_edges(self) -> int:
        return int(np.isfinite(self.edges).sum())

    @classmethod
    def build(
        cls,
        states: np.ndarray,
        goals: np.ndarray,
        distance: Distance,
        cutoff: float,
        block: int = 256,
        neighbors: int = 50,
    ) -> WaypointGraph:
        """The graph of ``states`` (goal projections ``goals``) with edges ``distance`` <=
        ``cutoff`` (0: :func:`auto_cutoff` with ``neighbors``); distances are evaluated
        ``block`` source rows at a time."""
        states, goals = np.asarray(states), np.asarray(goals)
        if len(states) != len(goals) or len(states) < 1:
            raise ValueError(
                f"a graph needs as many goals as states (>= 1), got {len(states)} states and "
                f"{len(goals)} goals"
            )
        s_code = distance.encode_states(states)
        g_code = distance.encode_goals(goals)
        n = len(states)
        w = np.empty((n, n), np.float64)
        for lo in range(0, n, block):
            w[lo : lo + block] = distance.between(_rows(s_code, lo, lo + block), g_code)
        if cutoff <= 0:
            cutoff = auto_cutoff(w, neighbors)
        return cls.from_distances(states, goals, w, cutoff, s_code, g_code)

    @classmethod
    def from_distances(
        cls,
        states: np.ndarray,
        goals: np.ndarray,
        w: np.ndarray,
        cutoff: float,
        state_code: Any = None,
        goal_code: Any = None,
    ) -> WaypointGraph:
        """The graph of a given ``[n, n]`` matrix ``w[i, j] = d(s_i, g_j)``."""
        from scipy.sparse import csgraph, csr_matrix  # here: the CLI imports this module

        w = np.array(w, np.float64)
        n = len(w)
        if w.shape != (n, n):
            raise ValueError(f"the distance matrix must be square, got shape {w.shape}")
        if np.any(np.isnan(w)) or np.any(w < 0):
            raise ValueError("distances must be >= 0 and not NaN")
        keep = w <= cutoff
        np.fill_diagonal(keep, False)
        edges = np.where(keep, w, np.inf)
        # csgraph reads a stored 0 as "no edge": a kept zero-length edge becomes tiny
        i, j = np.nonzero(keep)
        graph = csr_matrix((np.maximum(w[i, j], 1e-9), (i, j)), shape=(n, n))
        # Shortest paths *to* every node, from Dijkstra on the reversed graph: its
        # predecessor of i on the path from j is the successor of i on the path i -> j.
        dist_t, pred_t = csgraph.shortest_path(
            graph.T.tocsr(), method="D", directed=True, return_predecessors=True
        )
        succ = pred_t.T.astype(np.int32)
        np.fill_diagonal(succ, np.arange(n, dtype=np.int32))
        return cls(
            states=np.asarray(states),
            goals=np.asarray(goals),
            edges=edges,
            dist=np.ascontiguousarray(dist_t.T),
            succ=succ,
            cutoff=float(cutoff),
            state_code=state_code,
            goal_code=goal_code,
        )

    def path(self, i: int, j: int) -> list[int]:
        """Nodes of the shortest path from ``i`` to ``j`` (both included); [] without one."""
        if self.succ[i, j] == NO_PATH:
            return []
        out = [i]
        while out[-1] != j:
            out.append(int(self.succ[out[-1], j]))
        return out

    def waypoints(
        self,
        d_state: np.ndarray,
        d_goal: np.ndarray,
        d_direct: np.ndarray,
        waypoint_min: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The next waypoint of each row: ``(node [B] int, cost [B])``, node -1 meaning "the
        goal itself".

        ``d_state[b, i]``: distance from row ``b``'s state to node ``i``; ``d_goal[b, j]``:
        from node ``j`` to row ``b``'s goal; ``d_direct[b]``: from the state to the goal. The
        planned route is state -> i -> ... -> j -> goal with both end hops within the cutoff
        (the nearest node when none is), minimising the sum.

        The goal is the waypoint when there is no route, or when it is within the cutoff and
        the route confirms it is near (the route is at most one cutoff longer): a learned
        distance can call a far goal near (a "wormhole"), and a single direct hop is the
        easiest place for one to hide, whereas the route is made of short, trusted edges.

        Along the route, nodes the state has reached are skipped: those nearer than
        ``d_min + waypoint_min * (cutoff - d_min)``, with ``d_min`` the distance to the
        nearest node (a learned distance need not reach 0 at the state itself)."""
        b = len(d_state)
        node = np.full(b, -1, np.int64)
        cost = np.asarray(d_direct, np.float64).copy()
        for r in range(b):
            ds, dg = d_state[r], d_goal[r]
            first = np.flatnonzero(ds <= self.cutoff)
            last = np.flatnonzero(dg <= self.cutoff)
            if first.size == 0:
                first = np.array([int(np.argmin(ds))])
            if last.size == 0:
                last = np.array([int(np.argmin(dg))])
            total = ds[first][:, None] + self.dist[np.ix_(first, last)] + dg[last][None, :]
            k = int(np.argmin(total))
            best = float(total.flat[k])
            direct = d_direct[r] <= self.cutoff and best <= d_direct[r] + self.cutoff
            if direct or not np.isfinite(best):
                continue  # the goal itself
            i, j = int(first[k // len(last)]), int(last[k % len(last)])
            d_min = float(ds.min())
            reached = d_min + waypoint_min * max(self.cutoff - d_min, 0.0)
            while ds[i] < reached and i != j:  # walk the route to the first node not reached
                i = int(self.succ[i, j])
            node[r] = -1 if (i == j and ds[j] < reached) else i
            cost[r] = best
        return node, cost


def _rows(code: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of an encoding (an array or a tuple/dict of arrays)."""
    if isinstance(code, tuple):
        return tuple(_rows(c, lo, hi) for c in code)
    if isinstance(code, dict):
        return {k: _rows(v, lo, hi) for k, v in code.items()}
    return code[lo:hi]


class WaypointPlanner(ChunkPolicy):
    """``inner`` (a goal-conditioned policy reading ``observation/state`` and
    ``observation/goal``) asked to reach the next waypoint of a shortest path over ``graph``
    instead of the goal. Replans every ``config.replan_every`` calls, on a new batch size
    and when any row's goal changes (a new episode); in between, each row keeps its
    waypoint. Stateful like a robot's controller: one planner per stream of observations
    (a rollout's batch of envs, one served client)."""

    pad_batches = False

    def __init__(
        self, inner: Policy, graph: WaypointGraph, distance: Distance, config: PlannerConfig
    ):
        if not isinstance(inner, Policy):
            raise TypeError(f"WaypointPlanner wraps a Policy, got {inner!r}")
        names = {s.name for s in inner.spec.inputs}
        if not {STATE, GOAL} <= names:
            raise ValueError(
                f"WaypointPlanner needs a goal-conditioned policy reading {STATE!r} and "
                f"{GOAL!r}; {inner.spec.name} reads {sorted(names)}"
            )
        (goal_spec,) = [s for s in inner.spec.inputs if s.name == GOAL]
        if graph.goals.shape[1:] != tuple(goal_spec.shape):
            raise ValueError(
                f"graph node goals have shape {graph.goals.shape[1:]}, the policy's "
                f"{GOAL} {tuple(goal_spec.shape)}"
            )
        if graph.state_code is None or graph.goal_code is None:
            raise ValueError("the graph has no node encodings: build it with WaypointGraph.build")
        self.inner, self.graph, self.distance, self.config = inner, graph, distance, config
        self.spec = dataclasses.replace(inner.spec, name=f"{inner.spec.name}+plan")
        self.infer_seed = getattr(inner, "infer_seed", 0)
        self._goal: np.ndarray | None = None
        self._waypoint: np.ndarray | None = None
        self._calls = 0
        #: how many rows were routed through the graph at the last replan (diagnostics)
        self.last_routed = 0

    def reset(self) -> None:
        """Forget the current waypoints (the next call replans)."""
        self._goal = self._waypoint = None

    def plan(self, state: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(waypoint goals [B, goal_dim], waypoint nodes [B])`` for a batch (node -1: the
        goal itself)."""
        dist, g = self.distance, self.graph
        s_code, goal_code = dist.encode_states(state), dist.encode_goals(goal)
        d_state = dist.between(s_code, g.goal_code)  # [B, n]: state -> node
        d_goal = dist.between(g.state_code, goal_code).T  # [B, n]: node -> goal
        d_direct = np.diagonal(dist.between(s_code, goal_code))
        node, _ = g.waypoints(d_state, d_goal, d_direct, self.config.waypoint_min)
        way = np.where(node[:, None] >= 0, g.goals[np.maximum(node, 0)], goal)
        return way.astype(np.float32), node

    def act(self, obs: Batch, key) -> np.ndarray:
        state = np.asarray(obs[STATE], np.float32)
        goal = np.asarray(obs[GOAL], np.float32)
        stale = (
            self._goal is None
            or self._goal.shape != goal.shape
            or not np.array_equal(self._goal, goal)
            or self._calls % self.config.replan_every == 0
        )
        if stale:
            if self._goal is None or self._goal.shape != goal.shape:
                self._calls = 0
            self._waypoint, node = self.plan(state, goal)
            self._goal = goal.copy()
            self.last_routed = int(np.sum(node >= 0))
        self._calls += 1
        return self.inner.act({**obs, GOAL: self._waypoint}, key)
