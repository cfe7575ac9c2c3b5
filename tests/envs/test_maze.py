"""Physics invariants and the auto-reset contract of the point-mass mazes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.envs import REGISTRY, PointMaze, make
from anyskill.envs.maze import LAYOUTS, PointState, _is_wall

# The maze tests cover the point mazes; the tabletop suite has its own (tests/envs/tabletop).
ENV_NAMES = sorted(n for n in REGISTRY if n.startswith("pointmaze-"))
EVAL_NAMES = [n for n in ENV_NAMES if n.endswith("-eval")]


# ---- helpers ----------------------------------------------------------------------------
# Compiling is most of this file's run time (XLA:CPU takes ~1 s per rollout function), so
# envs, their jitted functions and one standard rollout per env are built once and shared.
@functools.cache
def get_env(name: str, **overrides) -> PointMaze:
    return make(name, **overrides)


@functools.cache
def jit_step(env):
    return jax.jit(env.step)


@functools.cache
def jit_rollout(env):
    """``run(key, actions [T, N, 2]) -> (initial states [N, ...], states after each step
    [T, N, ...])`` for N vmapped envs with auto-reset."""

    @jax.jit
    def run(key, actions):
        state0 = jax.vmap(env.reset)(jax.random.split(key, actions.shape[1]))

        def body(state, action):
            state = jax.vmap(env.step)(state, action)
            return state, state

        _, states = jax.lax.scan(body, state0, actions)
        return state0, states

    return run


N_ENVS, N_STEPS, HOLD = 256, 300, 25


@functools.cache
def standard_actions():
    """[N_STEPS, N_ENVS, 2]: half the envs take uniform random actions; the other half hold a
    full-speed action from {-1, 0, 1}^2 (corners included) for HOLD steps, so they ram walls
    and corners at max speed."""
    key_uniform, key_held = jax.random.split(jax.random.key(1))
    half = N_ENVS // 2
    uniform = jax.random.uniform(key_uniform, (N_STEPS, half, 2), minval=-1, maxval=1)
    held = jax.random.randint(key_held, (N_STEPS // HOLD, half, 2), -1, 2)
    held = jnp.repeat(held.astype(jnp.float32), HOLD, axis=0)
    return jnp.concatenate([uniform, held], axis=1)


@functools.cache
def standard_rollout(name: str):
    """(initial states, states) of the default ``name`` env under ``standard_actions``."""
    return jit_rollout(get_env(name))(jax.random.key(0), standard_actions())


def wall_overlap(env, pos):
    """Whether the open square [pos - radius, pos + radius] overlaps a wall cell (or leaves the
    grid), computed in float64 numpy, independently of the env's own collision code."""
    pos = np.asarray(pos, np.float64)
    uv = pos / env.cell_size + np.asarray(env.start_cell, np.float64) + 0.5
    half = env.radius / env.cell_size
    # The open interval (x - h, x + h) overlaps cell i iff floor(x - h) <= i <= ceil(x + h) - 1.
    lo = np.floor(uv - half).astype(int)
    hi = np.ceil(uv + half).astype(int) - 1
    n_rows, n_cols = env.walls.shape
    hit = (lo < 0).any(-1) | (hi[..., 0] >= n_rows) | (hi[..., 1] >= n_cols)
    # half < 0.5, so the body spans at most two cells per axis: lo and lo + 1 (if <= hi).
    for di in (0, 1):
        for dj in (0, 1):
            i = np.clip(np.minimum(lo[..., 0] + di, hi[..., 0]), 0, n_rows - 1)
            j = np.clip(np.minimum(lo[..., 1] + dj, hi[..., 1]), 0, n_cols - 1)
            hit = hit | env.walls[i, j]
    return hit


def cell_centres(env, cells):
    return np.asarray(env.cell_center(np.asarray(cells)), np.float64)


def layout_cells(name, kind):
    layout, _ = LAYOUTS[name.removeprefix("pointmaze-")]
    return [(i, j) for i, row in enumerate(layout) for j, c in enumerate(row) if c == kind]


def match_centres(points, centres):
    """Index of the centre each point sits on, or -1 if it is on none."""
    dist = np.abs(np.asarray(points, np.float64)[:, None] - centres[None]).max(-1)
    return np.where(dist.min(-1) < 1e-5, dist.argmin(-1), -1)


def place(env, state, pos, vel=(0.0, 0.0)):
    """The same state with the robot moved to ``pos`` with velocity ``vel``."""
    physics = PointState(pos=jnp.asarray(pos, jnp.float32), vel=jnp.asarray(vel, jnp.float32))
    obs = env.observe(physics)
    return state.replace(physics=physics, obs=obs, final_obs=obs)


# ---- the wall-overlap checker itself ----------------------------------------------------
def test_wall_overlap_helper_detects_overlap():
    env = get_env("pointmaze-u")
    r = env.radius
    # Start cell (1, 1) is the origin; its walls are at x = +-2 (rows 0 and 2) and y = -2.
    assert not wall_overlap(env, [0.0, 0.0])
    assert not wall_overlap(env, [2.0 - r, 0.0])  # touching is not overlapping
    assert wall_overlap(env, [2.0 - r + 1e-3, 0.0])
    assert wall_overlap(env, [-2.0 + r - 1e-3, 0.0])
    assert wall_overlap(env, [0.0, -2.0 + r - 1e-3])
    assert not wall_overlap(env, [0.0, 4.0])  # free cell (1, 2)
    assert wall_overlap(env, [0.0, 8.0 + 2.0 - r + 1e-3])  # cell (1, 3) into wall (1, 4)


# ---- no wall penetration ----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["arena", "u", "big", "hardest"])
def test_bit_packed_wall_lookup_matches_grid(layout):
    walls = get_env(f"pointmaze-{layout}").walls
    i, j = np.indices(walls.shape)
    np.testing.assert_array_equal(
        np.asarray(_is_wall(walls, jnp.asarray(i), jnp.asarray(j))), walls
    )


@pytest.mark.parametrize("name", ENV_NAMES)
def test_no_wall_penetration_random_and_full_speed(name):
    env = get_env(name)
    state0, states = standard_rollout(name)
    # obs is the state after auto-reset, final_obs the last state of an ended episode: check
    # both, and the first states.
    for p in (state0.obs[..., :2], states.obs[..., :2], states.final_obs[..., :2]):
        p = np.asarray(p)
        bad = wall_overlap(env, p)
        assert not bad.any(), f"{bad.sum()} positions overlap a wall, e.g. {p[bad][:3]}"
    # The full-speed half really reached the speed limit, so the test exercised fast hits, and
    # the held actions pinned bodies against walls (zero velocity while pushing).
    vel = np.asarray(states.obs[..., 2:])
    speed = np.linalg.norm(vel, axis=-1)
    assert speed[:, N_ENVS // 2 :].max() == pytest.approx(env.max_speed, rel=1e-5)
    assert speed.max() <= env.max_speed * (1 + 1e-5)
    pushing = np.asarray(standard_actions()[..., 0]) != 0
    assert (pushing & (vel[..., 0] == 0)).sum() > 1000


# Start cell (1, 1) of the U maze is the origin; wall faces around it, per direction.
U_FACES = {
    (1.0, 0.0): (0, 2.0),  # row 2 below the start is a wall: face at x = +2
    (-1.0, 0.0): (0, -2.0),  # row 0: face at x = -2
    (0.0, -1.0): (1, -2.0),  # column 0: face at y = -2
    (0.0, 1.0): (1, 10.0),  # columns 2, 3 are free, column 4 is a wall: face at y = 10
}


@pytest.mark.parametrize("action", list(U_FACES))
def test_drive_into_wall_stops_at_face(action):
    env = get_env("pointmaze-u", start_noise=0.0)
    axis, face = U_FACES[action]
    state = env.reset(jax.random.key(0))
    step = jit_step(env)
    speeds = []
    for _ in range(50):
        state = step(state, jnp.asarray(action))
        speeds.append(float(jnp.linalg.norm(state.obs[2:])))
    assert int(state.t) == 50 and not bool(state.truncated)
    # It hit the wall fast (the near walls are 1.75 units away: it is at 7.2 units/s by then;
    # the far one at full speed) ...
    assert max(speeds) >= 0.85 * env.max_speed
    # ... and stopped just short of the face, with the blocked velocity component zeroed.
    direction = action[axis]
    leading_face = float(state.obs[axis]) + direction * env.radius
    gap = direction * (face - leading_face)
    assert 0.0 <= gap < 1e-3, f"gap to the wall face {gap}"
    assert float(state.obs[2 + axis]) == 0.0
    # The other axis was never pushed: it stays at the start.
    assert float(state.obs[1 - axis]) == 0.0
    assert float(state.obs[3 - axis]) == 0.0


def test_slides_along_wall():
    """Pushing diagonally into a wall slides along it (no sticky cell boundaries)."""
    env = get_env("pointmaze-u", start_noise=0.0)
    state = env.reset(jax.random.key(0))
    step = jit_step(env)
    for _ in range(50):
        state = step(state, jnp.asarray([-1.0, 1.0]))
    # x is pinned at the row-0 wall (face x = -2); y slid to the column-4 wall (face y = 10).
    x, y = float(state.obs[0]), float(state.obs[1])
    assert 0.0 <= (x - env.radius) - (-2.0) < 1e-3
    assert 0.0 <= 10.0 - (y + env.radius) < 1e-3


@pytest.mark.parametrize("direction", list(U_FACES))
def test_body_touching_a_wall_cannot_enter_it(direction):
    """A body whose face lies exactly on a wall boundary stays out when pushed into it."""
    env = get_env("pointmaze-u", start_noise=0.0)
    axis, face = U_FACES[direction]
    pos = np.zeros(2, np.float32)
    pos[axis] = face - direction[axis] * env.radius  # exactly representable in float32
    vel = 5.0 * np.asarray(direction, np.float32)
    state = place(env, env.reset(jax.random.key(0)), pos, vel)
    step = jit_step(env)
    for _ in range(3):
        state = step(state, jnp.asarray(direction))
        assert not wall_overlap(env, state.obs[:2]), state.obs
        assert float(state.obs[2 + axis]) == 0.0


# ---- integrator -------------------------------------------------------------------------
# Short runs of an env used nowhere else are run eagerly: cheaper than compiling.
def test_constant_action_matches_closed_form_semi_implicit_euler():
    env = PointMaze(layout_name="arena", damping=0.0, start_noise=0.0)
    a = np.array([0.3, -0.2])
    state = env.reset(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(state.obs), 0.0)
    dt, accel = env.dt, env.accel
    for n in range(1, 6):
        state = env.step(state, jnp.asarray(a, jnp.float32))
        # v_n = n dt accel a;  x_n = sum_k dt v_k = dt^2 accel a n (n + 1) / 2
        vel = n * dt * accel * a
        pos = dt**2 * accel * a * n * (n + 1) / 2
        assert np.linalg.norm(vel) < env.max_speed  # the speed limit never kicks in
        np.testing.assert_allclose(np.asarray(state.obs[2:]), vel, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(state.obs[:2]), pos, rtol=1e-5, atol=1e-6)


def test_constant_velocity_is_integrated_exactly():
    env = PointMaze(layout_name="arena", damping=0.0, start_noise=0.0)
    vel = np.array([3.0, -2.0])
    state = place(env, env.reset(jax.random.key(0)), [0.0, 0.0], vel)
    for n in range(1, 11):
        state = env.step(state, jnp.zeros(2))
        np.testing.assert_allclose(np.asarray(state.obs[:2]), n * env.dt * vel, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.obs[2:]), vel, atol=1e-6)


def test_damped_speed_limited_dynamics_match_python_reference():
    """Default settings (damping, speed limit) against a float64 loop, far from walls."""
    env = get_env("pointmaze-arena")
    actions = np.array([[1.0, 0.5]] * 4 + [[-1.0, -1.0]] * 6 + [[0.2, -0.7]] * 5)
    state = env.reset(jax.random.key(0))
    step = jit_step(env)
    pos, vel = np.asarray(state.obs[:2], np.float64), np.zeros(2)
    capped = False
    for a in actions:
        state = step(state, jnp.asarray(a, jnp.float32))
        vel = vel + env.dt * (env.accel * a - env.damping * vel)
        speed = np.linalg.norm(vel)
        if speed > env.max_speed:
            vel, capped = vel * env.max_speed / speed, True
        pos = pos + env.dt * vel
        assert not wall_overlap(env, pos)
        np.testing.assert_allclose(np.asarray(state.obs[2:]), vel, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(state.obs[:2]), pos, rtol=1e-5, atol=1e-5)
    assert capped  # the case covered the speed limit


# ---- determinism and vmap ---------------------------------------------------------------
def test_same_key_same_trajectory():
    env = get_env("pointmaze-u")  # episode_length 100: the run crosses auto-resets
    a = standard_rollout("pointmaze-u")
    b = jit_rollout(env)(jax.random.key(0), standard_actions())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = jit_rollout(env)(jax.random.key(1), standard_actions())
    assert not np.array_equal(np.asarray(a[1].obs), np.asarray(c[1].obs))
    assert not np.array_equal(np.asarray(a[1].goal), np.asarray(c[1].goal))


def test_vmap_equals_python_loop():
    env = get_env("pointmaze-arena")  # episode_length 50: 120 steps cross two auto-resets
    n_envs, n_steps = 3, 120
    state0, batched = standard_rollout("pointmaze-arena")
    actions = standard_actions()
    keys = jax.random.split(jax.random.key(0), N_ENVS)  # as in jit_rollout
    step = jit_step(env)
    fields = ("obs", "goal", "final_obs", "final_goal", "reward", "t", "truncated", "success")
    batched = {f: np.asarray(getattr(batched, f))[:n_steps, :n_envs] for f in fields}
    looped = {f: np.zeros_like(batched[f]) for f in fields}
    for i in range(n_envs):
        state = env.reset(keys[i])  # unbatched and not jitted
        for t in range(n_steps):
            state = step(state, actions[t, i])
            for f in fields:
                looped[f][t, i] = np.asarray(getattr(state, f))
    for f in fields:
        np.testing.assert_allclose(looped[f], batched[f], rtol=1e-5, atol=1e-5, err_msg=f)
    assert (batched["truncated"].sum(0) == 2).all()


# ---- auto-reset -------------------------------------------------------------------------
def test_auto_reset_contract():
    length, n_episodes, n_envs = 5, 40, 2
    env = get_env("pointmaze-arena", episode_length=length)
    n_steps = length * n_episodes
    actions = jax.random.uniform(jax.random.key(1), (n_steps, n_envs, 2), minval=-2, maxval=2)
    state0, s = jit_rollout(env)(jax.random.key(0), actions)
    prev = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b[:-1]]), state0, s)

    step_index = np.arange(1, n_steps + 1)[:, None]
    ends = np.broadcast_to(step_index % length == 0, (n_steps, n_envs))
    np.testing.assert_array_equal(np.asarray(s.truncated), ends)
    assert not np.asarray(s.terminated).any()
    np.testing.assert_array_equal(np.asarray(s.t), np.where(ends, 0, step_index % length))

    # final_obs is always the post-step observation of the episode the step belonged to
    # (actions are clipped to [-1, 1] by the env).
    def continue_episode(physics, action):
        return env.observe(env._step_physics(physics, jnp.clip(action, -1, 1)))

    expected_final = jax.jit(jax.vmap(jax.vmap(continue_episode)))(prev.physics, actions)
    np.testing.assert_allclose(np.asarray(s.final_obs), np.asarray(expected_final), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s.final_goal), np.asarray(prev.goal))
    # Between resets obs is that observation; at a reset obs is a fresh start at rest.
    obs, final_obs = np.asarray(s.obs), np.asarray(s.final_obs)
    np.testing.assert_array_equal(obs[~ends], final_obs[~ends])
    assert not np.allclose(obs[ends], final_obs[ends])
    start = cell_centres(env, env.start_cell)
    assert (np.abs(obs[ends][:, :2] - start) <= env.start_noise + 1e-6).all()
    np.testing.assert_array_equal(obs[ends][:, 2:], 0.0)
    # Success and reward describe the ended episode's last observation and goal.
    dist = np.linalg.norm(final_obs[..., :2] - np.asarray(s.final_goal), axis=-1)
    np.testing.assert_array_equal(np.asarray(s.success), dist < env.success_threshold)
    np.testing.assert_array_equal(np.asarray(s.reward), np.asarray(s.success, np.float32))
    # Within an episode the goal does not change.
    np.testing.assert_array_equal(np.asarray(s.goal)[~ends], np.asarray(prev.goal)[~ends])

    # Every episode draws its own start and goal (a fresh key per episode), and goals are
    # centres of goal cells.
    goals = np.concatenate([np.asarray(state0.goal)[None], np.asarray(s.goal)[ends[:, 0]]])
    starts = np.concatenate([np.asarray(state0.obs)[None], obs[ends[:, 0]]])[..., :2]
    assert goals.shape == (n_episodes + 1, n_envs, 2)
    centres = cell_centres(env, env.goal_cells)
    for i in range(n_envs):
        cells = match_centres(goals[:, i], centres)
        assert (cells >= 0).all(), goals[:, i]
        assert len(set(cells)) >= 4, cells  # 41 draws from 8 cells
        assert (cells[1:] != cells[:-1]).sum() >= n_episodes // 2
        assert len({tuple(p) for p in starts[:, i]}) == n_episodes + 1


# ---- goals and evaluation variants ------------------------------------------------------
@pytest.mark.parametrize("name", ENV_NAMES)
def test_goals_are_centres_of_the_layouts_goal_cells(name):
    """Goals drawn at reset and at auto-reset come from the layout's goal cells (for -eval
    variants: only the eval cells), and every goal cell gets drawn."""
    env = get_env(name)
    allowed = cell_centres(env, layout_cells(name, "g"))
    state0, s = standard_rollout(name)
    goals = np.concatenate([np.asarray(state0.goal), np.asarray(s.goal).reshape(-1, 2)])
    cells = match_centres(goals, allowed)
    assert (cells >= 0).all(), goals[cells < 0][:5]
    assert set(cells) == set(range(len(allowed)))
    start = cell_centres(env, layout_cells(name, "r"))[0]
    assert (np.abs(np.asarray(state0.obs[:, :2]) - start) <= env.start_noise + 1e-6).all()


def test_eval_variants_are_far_goal_subsets():
    assert {"pointmaze-u-eval", "pointmaze-big-eval", "pointmaze-hardest-eval"} <= set(EVAL_NAMES)
    for name in EVAL_NAMES:
        train, ev = get_env(name.removesuffix("-eval")), get_env(name)
        train_goals = {tuple(c) for c in train.goal_cells.tolist()}
        eval_goals = {tuple(c) for c in ev.goal_cells.tolist()}
        assert eval_goals and eval_goals < train_goals, name
        np.testing.assert_array_equal(train.walls, ev.walls)
        assert train.start_cell == ev.start_cell
    u_eval = {tuple(c) for c in get_env("pointmaze-u-eval").goal_cells.tolist()}
    assert u_eval == {(3, 1), (3, 2), (3, 3)}  # the far arm of the U


@pytest.mark.parametrize("name", EVAL_NAMES)
def test_success_iff_within_threshold(name):
    env = get_env(name)
    assert env.success_threshold == 0.5
    state = env.reset(jax.random.key(0))
    goal = np.asarray(state.goal)
    rng = np.random.default_rng(0)
    for d in (0.0, 0.2, 0.49, 0.499, 0.501, 0.51, 1.0, 3.0):
        theta = rng.uniform(0, 2 * np.pi)
        pos = goal + d * np.array([np.cos(theta), np.sin(theta)])
        # At rest with no action the robot stays put, so the step's success is about `pos`.
        out = env.step(place(env, state, pos), jnp.zeros(2))
        np.testing.assert_allclose(np.asarray(out.obs[:2]), pos, atol=1e-5)
        assert bool(out.success) == (d < 0.5), d
        assert float(out.reward) == float(d < 0.5)
        assert bool(env.is_success(out.obs, out.goal)) == (d < 0.5)


# ---- bad input --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("pointmaze-uu", "pointmaze-u"),
        ("pointmaze-hardst", "pointmaze-hardest"),
        ("maze-big", "pointmaze-big"),
    ],
)
def test_unknown_env_name_suggests(name, suggestion):
    with pytest.raises(ValueError, match=f"Did you mean .*'{suggestion}'"):
        make(name)


@pytest.mark.parametrize(
    ("layout", "suggestion"), [("bigg", "big"), ("hardest_eval", "hardest-eval")]
)
def test_unknown_layout_suggests(layout, suggestion):
    with pytest.raises(ValueError, match=f"Did you mean .*'{suggestion}'"):
        PointMaze(layout_name=layout)


def test_too_fast_for_cell_size_names_values():
    with pytest.raises(ValueError, match=r"max_speed=100\.0.*cell_size=4\.0") as err:
        make("pointmaze-u", max_speed=100.0)
    assert "10.0" in str(err.value) and "3.5" in str(err.value)  # step length and its bound
    with pytest.raises(ValueError, match=r"max_speed=8\.0.*cell_size=1\.0"):
        PointMaze(layout_name="u", cell_size=1.0)
    PointMaze(layout_name="u", max_speed=34.9)  # just below the bound is fine


def test_bad_radius_names_value():
    with pytest.raises(ValueError, match=r"radius=2\.5"):
        PointMaze(layout_name="u", radius=2.5)
