"""Planning over a CRL run's learned distance: the critic as the planner's
:class:`~anyskill.policies.planning.Distance`, the replay buffer as its nodes, the actor as
the waypoint follower.

Distance. The critic was trained with the L2 energy ``f(s, a, g) = -||phi(s, a) - psi(g)||``
(``losses.l2_energy``), so ``-f`` is its temporal distance for a given first action. A
state-to-state distance needs a first action; we take the best one,

    d_raw(s, g) = min_a ||phi(s, a) - psi(g)||,   a over a grid of actions ({-1, 0, 1}^2),

the critic's greedy value ``max_a Q(s, a, g)`` (SoRB's ``V(s, g)``, with the max over a
grid instead of the actor's ``Q(s, pi(s, g), g)``). The grid makes every distance a
matmul: ``phi`` is evaluated K times per state and ``psi`` once per goal, so a 2,000-node
graph is 2,000 x K encoder passes and one [2,000 K, d] x [d, 2,000] product — the actor's
action would need an actor and a critic pass per *pair* (4 million for 2,000 nodes).

Units. ``d_raw`` is used as it is, in the critic's units, and the cutoff is found from the
graph itself (``PlannerConfig.cutoff = 0``: the typical node keeps ~``neighbors`` edges).
Its zero is not reached (a stored state's median distance to its own position is ~1.9 on the
hardest maze, against 1.3 to 16 between node pairs), so each hop costs at least that much: a
per-hop penalty that favours fewer, longer hops within the cutoff. Subtracting that floor
makes many short edges cost 0 (measured: it did), and calibrating into env steps along
stored trajectories does not work (the median ``d_raw(s_t, g(s_{t+k}))`` grows only from
1.9 to 2.8 over k = 0..60: many stored trajectories stall against walls, and a future state
of the same trajectory is a contrastive positive, close by construction).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.crl.networks import Critic
from anyskill.algos.crl.run import load_trained
from anyskill.algos.crl.train import CRLParams, CRLTrainer
from anyskill.data.replay import ReplayBuffer
from anyskill.policies.planning import (
    PlannerConfig,
    WaypointGraph,
    WaypointPlanner,
    farthest_point_sample,
)


class CRLDistance:
    """The critic's distance (see the module doc). States encode to
    ``phi(s, a_k)`` ``[M, K, d]``, goals to ``psi(g)`` ``[N, d]``."""

    def __init__(self, trainer: CRLTrainer, params: CRLParams, actions_per_axis: int = 3):
        if trainer.config.energy != "l2":
            raise ValueError(
                f"the planner reads distances from an L2 critic (-||phi - psi||); this run was "
                f"trained with energy={trainer.config.energy!r}, whose logits are not a distance"
            )
        if actions_per_axis < 2:
            raise ValueError(f"actions_per_axis must be >= 2, got {actions_per_axis}")
        env = trainer.env
        axis = np.linspace(-1.0, 1.0, actions_per_axis)
        grid = np.array(list(itertools.product(axis, repeat=env.action_dim)), np.float32)
        self.grid = grid
        self.goal_indices = np.asarray(env.goal_indices)
        critic, variables = trainer.critic, {"params": params.critic}

        def phi_grid(states):
            m, k = states.shape[0], grid.shape[0]
            s = jnp.repeat(states, k, axis=0)
            a = jnp.tile(jnp.asarray(grid), (m, 1))
            out = critic.apply(variables, s, a, method=Critic.phi)
            return out.reshape(m, k, -1)

        self._phi = jax.jit(phi_grid)
        self._psi = jax.jit(lambda g: critic.apply(variables, g, method=Critic.psi))

    # ---- raw distances --------------------------------------------------------------
    # encodings stay device arrays: the graph's are reused at every decision
    def encode_states(self, states: np.ndarray) -> jax.Array:
        return self._phi(jnp.asarray(states, jnp.float32))

    def encode_goals(self, goals: np.ndarray) -> jax.Array:
        return self._psi(jnp.asarray(goals, jnp.float32))

    @staticmethod
    def raw_between(phi: jax.Array, psi: jax.Array) -> np.ndarray:
        """``[M, N]``: min over the K actions of ``||phi[m, k] - psi[n]||``."""
        return np.asarray(_raw_between(jnp.asarray(phi), jnp.asarray(psi)), np.float64)

    def between(self, phi: jax.Array, psi: jax.Array) -> np.ndarray:
        return self.raw_between(phi, psi)


@jax.jit
def _raw_between(phi: jax.Array, psi: jax.Array) -> jax.Array:
    # jitted rather than numpy: numpy's threaded BLAS costs ~10 ms per small product on a
    # loaded 2-core machine (measured: 16 ms per decision vs 4 ms single-threaded)
    m, k, d = phi.shape
    flat = phi.reshape(m * k, d)
    sq = (flat**2).sum(-1)[:, None] + (psi**2).sum(-1)[None, :] - 2.0 * flat @ psi.T
    return jnp.sqrt(jnp.maximum(sq.reshape(m, k, -1).min(axis=1), 0.0))


def _ordered(buffer: ReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    """The buffer's stored rows oldest first: obs ``[L, E, obs_dim]``, t ``[L, E]``."""
    size, pos = int(buffer.size), int(buffer.insert_pos)
    obs, t = np.asarray(buffer.data.obs), np.asarray(buffer.data.t)
    cap = t.shape[0]
    order = np.arange(size) if size < cap else (pos + np.arange(cap)) % cap
    return obs[order], t[order]


def node_states(buffer: ReplayBuffer, n: int, goal_indices, seed: int = 0) -> np.ndarray:
    """``n`` states of the buffer spread over its goal space (farthest-point sampling of a
    random pool of at most 20n states)."""
    obs, _ = _ordered(buffer)
    flat = obs.reshape(-1, obs.shape[-1])
    rng = np.random.default_rng(seed)
    pool = flat[rng.permutation(len(flat))[: 20 * n]]
    return pool[farthest_point_sample(pool[:, list(goal_indices)], n, seed)]


@dataclasses.dataclass
class BuiltPlanner:
    planner: WaypointPlanner
    distance: CRLDistance
    build_seconds: float
    """Node choice, graph distances and all-pairs shortest paths."""


def build_planner(run_dir: Path, config: PlannerConfig, seed: int = 0, loaded=None) -> BuiltPlanner:
    """A :class:`WaypointPlanner` around a CRL run's actor, over a graph of its replay buffer
    weighted by its critic. ``loaded``: ``load_trained(run_dir)``'s result, if at hand."""
    from anyskill.algos.crl.policy import CRLPolicy

    trainer, state, _ = loaded if loaded is not None else load_trained(Path(run_dir))
    t0 = time.perf_counter()
    distance = CRLDistance(trainer, state.params)
    states = node_states(state.buffer, config.nodes, trainer.env.goal_indices, seed)
    goals = states[:, list(trainer.env.goal_indices)]
    graph = WaypointGraph.build(states, goals, distance, config.cutoff, neighbors=config.neighbors)
    build = time.perf_counter() - t0
    planner = WaypointPlanner(CRLPolicy(run_dir), graph, distance, config)
    return BuiltPlanner(planner, distance, build)


def success_metrics(env, episodes) -> dict[str, float]:
    """success_any (any frame within the threshold), time at goal and final success of
    recorded :class:`~anyskill.rollout.Episodes` — the numbers ``anyskill eval`` reports."""
    gi = list(env.goal_indices)
    # the observation after action t: frame t + 1, or the final one after the last action
    b = len(episodes.length)
    frames = np.concatenate([episodes.state[:, 1:], episodes.state[:, :1]], axis=1)
    frames[np.arange(b), episodes.length - 1] = episodes.final_state
    live = np.arange(frames.shape[1])[None] < episodes.length[:, None]
    near = np.linalg.norm(frames[..., gi] - episodes.goal[:, :1], axis=-1) < env.success_threshold
    at_goal = near & live
    return {
        "success_any": float(at_goal.any(axis=1).mean()),
        "time_at_goal": float(at_goal.sum(axis=1).mean()),
        "final_success": float(np.mean(episodes.success)),
    }


def evaluate(env, policy, episodes: int, seed: int):
    """Run ``policy`` for ``episodes`` episodes of ``env`` (keys from ``seed``: two policies
    evaluated with one seed meet the same starts and goals); returns (metrics, Episodes)."""
    from anyskill.rollout import rollout

    ep = rollout(env, policy, jax.random.key(seed), num_envs=episodes, replan_every=1)
    return success_metrics(env, ep), ep


def eval_planned(
    run_dir: Path,
    config: PlannerConfig,
    episodes: int = 256,
    seed: int = 12345,
    video: Path | None = None,
    video_episodes: int = 8,
) -> dict:
    """Evaluate a CRL run with the planner on its eval env; optionally draw the episodes."""
    built = build_planner(Path(run_dir), config)
    planner = built.planner
    env = planner.inner.trainer.eval_env
    flat, _ = evaluate(env, planner.inner, episodes, seed)  # the same starts and goals
    t0 = time.perf_counter()
    metrics, ep = evaluate(env, planner, episodes, seed)
    g = planner.graph
    out = {
        **metrics,
        "flat_success_any": flat["success_any"],
        "flat_time_at_goal": flat["time_at_goal"],
        "episodes": episodes,
        "planner": dataclasses.asdict(config),
        "graph_nodes": g.num_nodes,
        "graph_edges": g.num_edges,
        "graph_cutoff": round(g.cutoff, 4),
        "graph_build_s": round(built.build_seconds, 3),
        "eval_s": round(time.perf_counter() - t0, 3),
    }
    if video is not None:
        from anyskill.envs.render import render_maze_frames, save_video, tile_frames

        gi = list(env.goal_indices)
        n = min(video_episodes, episodes)
        clips = []
        for i in range(n):
            pos = np.concatenate([ep.state[i, : ep.length[i]], ep.final_state[i][None]])[:, gi]
            clips.append(render_maze_frames(env, pos, ep.goal[i, 0]))
        save_video(tile_frames(clips, cols=min(4, n)), video, fps=20)
        out["video"] = str(video)
    return out
