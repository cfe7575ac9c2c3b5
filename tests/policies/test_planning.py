"""The planner (issue 28): shortest paths on hand-built distances, the cutoff, waypoint
choice, and a U-maze where a greedy goal-seeker fails alone and succeeds following the
planner's waypoints over true geodesic distances (no training needed)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.envs import make
from anyskill.envs.maze_geodesic import MazeGeodesic
from anyskill.policies.base import GOAL, STATE, ChunkPolicy, InputSpec, Policy, PolicySpec
from anyskill.policies.planning import (
    NO_PATH,
    PlannerConfig,
    WaypointGraph,
    WaypointPlanner,
    auto_cutoff,
    farthest_point_sample,
)

INF = np.inf


def _graph(w, cutoff):
    n = len(w)
    pts = np.arange(n, dtype=np.float32)[:, None]
    return WaypointGraph.from_distances(pts, pts, np.asarray(w, float), cutoff)


def _floyd_warshall(w, cutoff):
    """Reference: plain Python all-pairs shortest paths over the edges <= cutoff."""
    n = len(w)
    d = [
        [0.0 if i == j else (w[i][j] if w[i][j] <= cutoff else INF) for j in range(n)]
        for i in range(n)
    ]
    for k, i, j in itertools.product(range(n), repeat=3):
        if d[i][k] + d[k][j] < d[i][j]:
            d[i][j] = d[i][k] + d[k][j]
    return np.array(d)


def test_shortest_paths_on_a_hand_built_line():
    # 0 -> 1 -> 2 -> 3 each 1; the direct 0 -> 3 costs 10; nothing leads back
    w = np.full((4, 4), 100.0)
    w[0, 1] = w[1, 2] = w[2, 3] = 1.0
    w[0, 3] = 10.0
    g = _graph(w, cutoff=20.0)
    assert g.dist[0, 3] == 3.0 and g.path(0, 3) == [0, 1, 2, 3]
    assert g.succ[0, 3] == 1 and g.succ[2, 3] == 3 and g.succ[3, 3] == 3
    assert g.dist[3, 0] == INF and g.succ[3, 0] == NO_PATH and g.path(3, 0) == []
    assert g.dist[1, 0] == INF  # directed: the edges are one-way


def test_shortest_paths_match_floyd_warshall_on_random_asymmetric_distances():
    rng = np.random.default_rng(0)
    w = rng.uniform(0.1, 10.0, (12, 12))
    g = _graph(w, cutoff=3.0)
    np.testing.assert_allclose(g.dist, _floyd_warshall(w.tolist(), 3.0))
    for i, j in itertools.product(range(12), repeat=2):  # the successors trace those lengths
        p = g.path(i, j)
        if np.isfinite(g.dist[i, j]):
            assert p[0] == i and p[-1] == j
            assert sum(w[a, b] for a, b in itertools.pairwise(p)) == pytest.approx(g.dist[i, j])
        else:
            assert p == []


def test_the_cutoff_drops_long_edges():
    w = np.full((4, 4), 100.0)
    w[0, 1] = w[1, 2] = w[2, 3] = 1.0
    w[0, 3] = 2.5
    kept = _graph(w, cutoff=5.0)
    assert kept.path(0, 3) == [0, 3] and kept.dist[0, 3] == 2.5
    assert kept.num_edges == 4 and np.isfinite(kept.edges[0, 3])
    dropped = _graph(w, cutoff=2.0)  # 0 -> 3 is now longer than trusted: go round
    assert dropped.path(0, 3) == [0, 1, 2, 3] and dropped.dist[0, 3] == 3.0
    assert dropped.num_edges == 3 and dropped.edges[0, 3] == INF
    assert np.isinf(_graph(w, cutoff=0.5).dist[0, 1])  # nothing kept: no path


def test_waypoints_route_through_the_graph_or_go_to_a_near_goal():
    w = np.full((4, 4), 100.0)
    w[0, 1] = w[1, 2] = w[2, 3] = 4.0
    g = _graph(w, cutoff=5.0)
    # row 0: the state is next to node 0 (already reached), the goal next to node 3, far
    # directly: the waypoint is node 1, the first one not reached
    # row 1: the goal is within the cutoff and the route agrees: the goal itself
    # row 2: the state has no node within the cutoff: the nearest one starts the route
    # row 3: the goal looks near directly (2.0) but the route says it is far: a wormhole,
    # so the route is followed
    d_state = np.array(
        [
            [0.5, 4.5, 8.5, 12.5],
            [0.5, 4.5, 8.5, 12.5],
            [7.0, 9.0, 20.0, 30.0],
            [0.5, 4.5, 8.5, 12.5],
        ]
    )
    d_goal = np.array(
        [[12.5, 8.5, 4.5, 0.5], [3.0, 9.0, 9.0, 9.0], [12.5, 8.5, 4.5, 0.5], [12.5, 8.5, 4.5, 0.5]]
    )
    direct = np.array([50.0, 2.0, 50.0, 2.0])
    node, cost = g.waypoints(d_state, d_goal, direct, waypoint_min=0.1)
    assert node.tolist() == [1, -1, 0, 1]
    assert cost[0] == pytest.approx(0.5 + 12.0 + 0.5) and cost[1] == 2.0
    # reached: nearer than 0.5 + 0.9 * (5 - 0.5) = 4.55, so nodes 0 and 1 are passed
    node, _ = g.waypoints(d_state[:1], d_goal[:1], direct[:1], waypoint_min=0.9)
    assert node.tolist() == [2]


def test_farthest_point_sampling_covers_both_clusters():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.1, (100, 2)), rng.normal(10, 0.1, (5, 2))])
    idx = farthest_point_sample(pts, 2, seed=3)
    assert sorted(pts[idx, 0] > 5) == [False, True]
    assert len(set(farthest_point_sample(pts, 50).tolist())) == 50
    assert farthest_point_sample(pts, 500).tolist() == list(range(105))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("nodes", 1, "nodes"),
        ("cutoff", -1.0, "cutoff"),
        ("neighbors", 2000, "neighbors"),
        ("waypoint_min", 1.0, "waypoint_min"),
        ("replan_every", 0, "replan_every"),
    ],
)
def test_planner_config_refuses_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**{field: value})


def test_the_automatic_cutoff_keeps_about_the_asked_degree():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 10, (300, 2))
    w = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    g = WaypointGraph.from_distances(pts, pts, w, auto_cutoff(w, 20))
    assert np.median(np.isfinite(g.edges).sum(axis=1)) == pytest.approx(20, abs=1)


class GreedySeeker(ChunkPolicy):
    """Accelerate straight at the goal (a PD law): reaches any goal in sight, and presses
    against the wall when the goal is behind one."""

    def __init__(self):
        self.spec = PolicySpec(
            (InputSpec(STATE, (4,), "float32"), InputSpec(GOAL, (2,), "float32")),
            action_dim=2,
            action_horizon=1,
            control_hz=10.0,
            name="greedy",
        )

    def act(self, obs, key):
        s, g = np.asarray(obs[STATE]), np.asarray(obs[GOAL])
        a = np.clip(1.0 * (g - s[:, :2]) - 0.25 * s[:, 2:], -1.0, 1.0)
        return a[:, None].astype(np.float32)


def _oracle_planner(env, inner, **kw):
    """A planner over the maze's true geodesic distances, nodes on a lattice of free space."""
    geo = MazeGeodesic(env)
    offsets = np.array(list(itertools.product((-1.2, 0.0, 1.2), repeat=2)))
    centers = np.asarray(env.cell_center(jnp.asarray(env.free_cells)))
    pos = (centers[:, None] + offsets[None]).reshape(-1, 2).astype(np.float32)
    states = np.concatenate([pos, np.zeros_like(pos)], axis=1)
    cfg = PlannerConfig(**{"nodes": len(pos), "cutoff": 5.0, "waypoint_min": 0.3, **kw})
    graph = WaypointGraph.build(states, pos, geo, cfg.cutoff)
    return WaypointPlanner(inner, graph, geo, cfg)


def test_planning_solves_the_u_maze_where_the_greedy_policy_fails():
    from anyskill.algos.crl.planner import evaluate

    env = make("pointmaze-u-eval")  # goals in the bottom arm, behind the wall from the start
    flat, _ = evaluate(env, GreedySeeker(), episodes=12, seed=0)
    planner = _oracle_planner(env, GreedySeeker(), replan_every=2)
    plan, _ = evaluate(env, planner, episodes=12, seed=0)  # the same starts and goals
    assert flat["success_any"] <= 0.5  # only the goal in line with the corridor
    assert plan["success_any"] == 1.0
    assert planner.last_routed >= 0


def test_the_planner_is_a_policy_that_serves():
    env = make("pointmaze-u-eval")
    planner = _oracle_planner(env, GreedySeeker(), replan_every=3)
    assert isinstance(planner, Policy) and planner.spec.name == "greedy+plan"
    assert planner.spec.action_horizon == 1
    obs = {STATE: np.zeros(4, np.float32), GOAL: np.array([8.0, 0.0], np.float32)}
    chunks = planner.infer([planner.spec.validate(obs)] * 3)  # the server's entry
    assert chunks.shape == (3, 1, 2) and np.all(np.isfinite(chunks))
    # the goal is behind the wall (straight down, +x): the first waypoint is to the right
    way, node = planner.plan(obs[STATE][None], obs[GOAL][None])
    assert node[0] >= 0 and way[0, 1] > 1.0
    assert np.all(chunks[:, 0, 1] > 0)  # so it accelerates along +y, not into the wall
    planner.warmup(4)


def test_the_planner_refuses_a_policy_without_a_goal():
    env = make("pointmaze-u-eval")

    class Blind(GreedySeeker):
        def __init__(self):
            super().__init__()
            self.spec = PolicySpec((InputSpec(STATE, (4,), "float32"),), 2, 1, 10.0)

    with pytest.raises(ValueError, match="goal-conditioned"):
        _oracle_planner(env, Blind())


def test_crl_distance_is_the_critics_best_action_energy():
    from anyskill.algos.crl.config import get_preset
    from anyskill.algos.crl.planner import CRLDistance
    from anyskill.algos.crl.train import make_train

    trainer = make_train(get_preset("arena-smoke"), devices=jax.local_devices()[:1])
    params = trainer.init_params(jax.random.PRNGKey(0))
    dist = CRLDistance(trainer, params)
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 4)).astype(np.float32)
    g = rng.normal(size=(5, 2)).astype(np.float32)
    raw = dist.raw_between(dist.encode_states(s), dist.encode_goals(g))
    # reference: -f = ||phi(s, a) - psi(g)|| minimised over the 9 grid actions, pair by pair
    critic = trainer.critic.bind({"params": params.critic})
    grid = jnp.asarray(dist.grid)
    phi = critic.phi(jnp.repeat(s, len(grid), axis=0), jnp.tile(grid, (3, 1)))  # [3 * 9, d]
    psi = critic.psi(g)
    for i, j in itertools.product(range(3), range(5)):
        rows = phi[i * len(grid) : (i + 1) * len(grid)]
        best = float(jnp.min(jnp.linalg.norm(rows - psi[j], axis=-1)))
        assert raw[i, j] == pytest.approx(best, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(dist.between(dist.encode_states(s), dist.encode_goals(g)), raw)


@pytest.mark.parametrize("command", [["eval"], ["train", "crl"]])
def test_the_cli_describes_the_planner_flags(command, capsys):
    from anyskill import cli

    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--plan", "--planner.nodes", "--planner.cutoff", "--planner.replan-every"):
        assert flag in out
