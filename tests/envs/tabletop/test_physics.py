"""Invariants of the tabletop contact solver, on hand-built bodies (no env, no tasks).

Compiling dominates this file's run time, so every test shares two programs built once: a
``STEPS``-step rollout of one table and the same rollout ``vmap``-ed over a batch of tables.
Tables always have ``SLOTS`` object slots (unused ones inactive) and friction is a traced
argument, so no test triggers another compile.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from anyskill.envs.tabletop import physics as P
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import PUSHER_MASS, PUSHER_RADIUS

BLOCK, DISC, BAR = (T.SHAPES.index(s) for s in ("block", "disc", "bar"))
DEFAULT = P.PhysicsParams()
STEPS = 60  # control steps per rollout call (one compiled length for every test)
CONTROL_DT = DEFAULT.dt * DEFAULT.substeps


SLOTS = 4  # object slots of every hand-built table: one shape of arrays, one compile


def make_bodies(pos, shapes, angle=None, vel=None, pusher_active=True) -> P.Bodies:
    """Body 0 a pusher as in the env (heavy disc), bodies 1.. objects of ``shapes``; unused
    slots up to ``SLOTS`` are inactive (no contact), so every table has the same shapes."""
    shapes = list(shapes)
    n_obj = len(shapes)
    shapes = np.asarray(shapes + [DISC] * (SLOTS - n_obj))
    n = SLOTS + 1

    def pad(x, shape):
        out = np.zeros(shape, np.float32)
        if x is not None:
            x = np.asarray(x, np.float32)
            out[: len(x)] = x
        return out

    geom = T.SHAPE_GEOMETRY[shapes]
    half = np.concatenate([np.zeros((1, 2)), geom[:, :2]]).astype(np.float32)
    radius = np.concatenate([[PUSHER_RADIUS], geom[:, 2]]).astype(np.float32)
    mass = np.ones(n, np.float32)
    mass[0] = PUSHER_MASS
    active = np.arange(n) <= n_obj
    active[0] = pusher_active
    return P.Bodies(
        pos=jnp.asarray(pad(pos, (n, 2))),
        angle=jnp.asarray(pad(angle, (n,))),
        vel=jnp.asarray(pad(vel, (n, 2))),
        angvel=jnp.zeros(n, jnp.float32),
        half=jnp.asarray(half),
        radius=jnp.asarray(radius),
        inv_mass=jnp.asarray(1.0 / mass),
        inv_inertia=jnp.asarray(1.0 / P.box_inertia(mass, half, radius), jnp.float32),
        active=jnp.asarray(active),
    )


@struct.dataclass
class Trace:
    """Per control step of a rollout: bodies after the step and their contact depths.

    pos [T, B, 2], angle [T, B], vel [T, B, 2]; pair_depth [T, P] the penetration (>= 0) of
    every body pair in ``itertools.combinations(range(B), 2)`` order; wall_depth [T].
    """

    pos: jax.Array
    angle: jax.Array
    vel: jax.Array
    pair_depth: jax.Array
    wall_depth: jax.Array


def rollout(bodies: P.Bodies, actions: jax.Array, friction: jax.Array):
    """``control_step`` under ``actions [T, 2]`` (pusher velocity = action, units/s).

    ``friction`` = (friction_decel, angular_friction_decel) is traced rather than static,
    so the frictionless momentum test shares the compiled program of every other test.
    """
    params = dataclasses.replace(
        DEFAULT, friction_decel=friction[0], angular_friction_decel=friction[1]
    )
    n = bodies.angle.shape[-1]
    num_pairs = n * (n - 1) // 2

    def body(b, action):
        b = P.control_step(b, action, params)
        depth, *_ = P.detect(b, b.pos[:, 0], b.pos[:, 1], b.angle, params.table_half)
        depth = jnp.maximum(depth, 0.0)
        trace = Trace(b.pos, b.angle, b.vel, depth[:num_pairs], jnp.max(depth[num_pairs:]))
        return b, trace

    return jax.lax.scan(body, bodies, actions)


FRICTION = np.array([DEFAULT.friction_decel, DEFAULT.angular_friction_decel], np.float32)
#: no table friction at all: a free body keeps its velocity, so momentum is observable
FRICTIONLESS = np.zeros(2, np.float32)


@functools.cache
def _run_one():
    return jax.jit(rollout)


def run_one(bodies, actions, friction=FRICTION):
    """One table: ``(final bodies, Trace [T, ...])``."""
    return _run_one()(bodies, jnp.asarray(actions), jnp.asarray(friction))


@functools.cache
def _run_batch():
    return jax.jit(jax.vmap(rollout, in_axes=(0, 0, None)))


def run_batch(bodies, actions):
    """A batch of tables (leading axis of ``bodies`` and ``actions``)."""
    return _run_batch()(bodies, jnp.asarray(actions), jnp.asarray(FRICTION))


@functools.cache
def penetrations():
    return jax.jit(functools.partial(P.penetrations, table_half=DEFAULT.table_half))


# ---- random pushing: one batch shared by several tests ------------------------------------
NUM_TABLES, CHUNKS, HOLD = 32, 4, 6
SHAPES4 = [BLOCK, DISC, BAR, BLOCK]  # all three shapes, four objects: the densest table
PAIRS = list(itertools.combinations(range(len(SHAPES4) + 1), 2))
PUSHER_PAIRS = [i for i, (a, _) in enumerate(PAIRS) if a == 0]
OBJECT_PAIRS = [i for i, (a, _) in enumerate(PAIRS) if a > 0]


def random_tables(seed: int = 0) -> P.Bodies:
    """``NUM_TABLES`` tables like the env's spawn: bodies on distinct cells of a 3x3 grid."""
    rng = np.random.default_rng(seed)
    cells = 0.42 * np.array([[i, j] for i in (-1, 0, 1) for j in (-1, 0, 1)], np.float32)
    tables = []
    for _ in range(NUM_TABLES):
        pos = cells[rng.permutation(9)[: len(SHAPES4) + 1]] + rng.uniform(-0.04, 0.04, (5, 2))
        angle = rng.uniform(-np.pi, np.pi, 5) * np.array([0, 1, 1, 1, 1])
        tables.append(make_bodies(pos, SHAPES4, angle))
    return jax.tree.map(lambda *x: jnp.stack(x), *tables)


def random_actions(seed: int = 0) -> np.ndarray:
    """``[CHUNKS, NUM_TABLES, STEPS, 2]`` uniform actions at full scale, each held ``HOLD``
    steps so the pusher crosses the table, rams objects into each other and into walls."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (CHUNKS, NUM_TABLES, STEPS // HOLD, 2)).astype(np.float32)
    return np.repeat(a, HOLD, axis=2)


@pytest.fixture(scope="module")
def random_pushing():
    """(initial bodies, final bodies, Trace [NUM_TABLES, CHUNKS * STEPS, ...])."""
    bodies0 = bodies = random_tables()
    traces = []
    for actions in random_actions():
        bodies, trace = run_batch(bodies, actions)
        traces.append(jax.device_get(trace))
    trace = jax.tree.map(lambda *x: np.concatenate(x, axis=1), *traces)
    return bodies0, bodies, trace


def test_contact_depth_matches_hand_geometry():
    """The depth the tests measure penetration with is the true overlap (disc-disc: r1 + r2 -
    distance; axis-aligned boxes: overlap of the extents; wall: how far past the wall), and 0
    when apart."""
    far = [-0.6, -0.6]  # the pusher, away from everything
    pair, wall = penetrations()(make_bodies([far, [0.0, 0.0], [0.15, 0.05]], [DISC, DISC]))
    np.testing.assert_allclose(pair, 0.2 - np.hypot(0.15, 0.05), atol=1e-6)
    assert wall == 0.0
    # blocks reach 0.085 + 0.015 = 0.1 on each side; centres 0.17 apart -> 0.03 overlap
    bodies = make_bodies([far, [0.0, 0.0], [0.17, 0.01]], [BLOCK, BLOCK])
    np.testing.assert_allclose(penetrations()(bodies)[0], 0.03, atol=1e-6)
    bodies = make_bodies([far, [0.0, 0.0], [0.21, 0.0]], [BLOCK, BLOCK])
    assert penetrations()(bodies)[0] == 0.0
    bodies = make_bodies([far, [0.92, 0.0]], [DISC])  # 0.02 into the right wall
    np.testing.assert_allclose(penetrations()(bodies)[1], 0.02, atol=1e-6)


def test_random_pushing_keeps_objects_apart(random_pushing):
    """No deep interpenetration between objects after many full-speed random pushes.

    Measured on this batch: object-object max 0.015, 99.9th percentile over all pairs
    0.012; on other seeds (64 tables x 300 steps) up to 0.046. The deep cases are chain
    pushes (see the chain test below), bounded by ~0.06, so the tolerance is 0.075; a solver
    that missed contacts would overlap by a body's size (0.1-0.2). Deep overlaps are rare
    transients: the 99.9th percentile must stay below 0.03.
    """
    _, _, trace = random_pushing
    obj = trace.pair_depth[..., OBJECT_PAIRS]
    worst, p999 = float(obj.max()), float(np.quantile(trace.pair_depth.max(-1), 0.999))
    print(f"object-object max {worst:.4f}; 99.9th percentile over all pairs {p999:.4f}")
    assert worst < 0.075
    assert p999 < 0.03
    # The test is not vacuous: objects were pushed around and collided.
    moved = np.linalg.norm(trace.pos[:, -1, 1:] - trace.pos[:, 0, 1:], axis=-1)
    assert moved.max() > 0.5
    assert (obj > 1e-3).any()


def test_a_chain_push_overlaps_by_at_most_one_substep_of_travel():
    """The pusher drives a block into two discs in a row at full speed. Contacts are found
    once per substep, so a link of the chain is only seen one substep after it closes and
    overlaps by up to one substep of travel (max_speed * dt = 0.05) plus the solver's
    residual: measured 0.062 on the first step, 0.033 on the second, then < 0.02.
    Tolerance 0.075."""
    x0 = -0.8
    pos = [[x0, 0.0], [x0 + 0.161, 0.0], [x0 + 0.363, 0.0], [x0 + 0.565, 0.0]]
    bodies = make_bodies(pos, [BLOCK, DISC, DISC])  # gaps of 0.001-0.002 between the links
    actions = np.zeros((STEPS, 2), np.float32)
    actions[:8, 0] = 1.0  # 8 steps at full speed, then rest
    _, trace = run_one(bodies, actions)
    depth = trace.pair_depth[:8]
    print("max overlap per step:", np.asarray(depth.max(-1)).round(4))
    assert depth.max() < 0.075
    assert depth[4:].max() < 0.03  # the chain settles once every link is in contact
    assert trace.pos[7, 3, 0] - pos[3][0] > 0.3  # the whole chain was pushed


def test_nothing_enters_or_leaves_the_walls(random_pushing):
    """The wall projection ends every substep: by the solver's own depth no body is ever
    inside a wall (float32 rounding only, < 1e-4).

    Checked independently from the exact geometry in float64 too: the wall depth uses the
    exact support radius (the smoothed support point is only the solver's lever arm), so the
    bound is float32 rounding as well.
    """
    _, _, trace = random_pushing
    assert trace.wall_depth.max() < 1e-4
    bodies0 = random_tables()
    half = np.asarray(bodies0.half[0], np.float64)  # [B, 2], the same on every table
    radius = np.asarray(bodies0.radius[0], np.float64)
    c, s = np.cos(trace.angle), np.sin(trace.angle)
    # support of a rounded box along x and y: |hx cos| + |hy sin| + r (resp. sin/cos)
    reach_x = np.abs(half[:, 0] * c) + np.abs(half[:, 1] * s) + radius
    reach_y = np.abs(half[:, 0] * s) + np.abs(half[:, 1] * c) + radius
    assert np.isfinite(trace.pos).all()
    beyond = max(
        (np.abs(trace.pos[..., 0]) + reach_x).max(), (np.abs(trace.pos[..., 1]) + reach_y).max()
    )
    print(f"deepest into a wall (exact geometry): {beyond - DEFAULT.table_half:.2e}")
    assert beyond < DEFAULT.table_half + 1e-4


def test_pusher_pushes_an_object_against_a_wall_without_sinking_into_it():
    """The pusher "backs out of every object" (physics._project): driving a disc head-on into
    a wall must stall the pusher, never leave it inside the disc (the bodies leave the walls
    first, then the pusher backs out of the disc)."""
    bodies = make_bodies([[0.0, 0.69], [0.0, 0.85]], [DISC])  # touching, 0.05 from the wall
    _, trace = run_one(bodies, np.tile([[0.0, 1.0]], (STEPS, 1)))
    print("pusher-disc depth per step:", np.asarray(trace.pair_depth[:5, 0]).round(4))
    # the pusher stays below the disc (it did not tunnel through) ...
    assert (trace.pos[:, 0, 1] < trace.pos[:, 1, 1]).all()
    # ... and out of it: the back-out is exact up to float32 rounding
    assert trace.pair_depth[:, 0].max() < 1e-4


def test_random_pushing_pusher_overlap_is_small(random_pushing):
    """Under random pushing the pusher never sinks visibly into an object, walls included (before
    the back-out followed the wall projection this reached 0.046-0.08, always next to a wall).
    Overlap remains only where an object and a wall leave the pusher a gap narrower than
    itself."""
    _, _, trace = random_pushing
    worst = float(trace.pair_depth[..., PUSHER_PAIRS].max())
    print(f"pusher-object max {worst:.4f}")
    assert worst < 0.03


def test_momentum_is_conserved_in_a_free_collision():
    """Two unit-mass discs, no friction, pusher inactive: a head-on and an oblique hit
    conserve total linear momentum (the PBD corrections are equal and opposite, mass-weighted).
    Compared before the hit and after it, before anything reaches a wall."""
    for offset in (0.0, 0.08):
        bodies = make_bodies(
            [[-0.8, -0.8], [-0.3, offset], [0.0, 0.0]],
            [DISC, DISC],
            vel=[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
            pusher_active=False,
        )
        _, trace = run_one(bodies, np.zeros((STEPS, 2)), FRICTIONLESS)
        before = np.array([1.0, 0.0])
        after = np.asarray(trace.vel[4, 1:].sum(0))  # hit at ~0.1 s, walls after > 0.5 s
        print(f"offset {offset}: momentum after the hit {after}")
        # the hit happened: the struck disc moves, the striker slowed down
        assert trace.vel[4, 2, 0] > 0.3 and trace.vel[4, 1, 0] < 0.8
        # within a few % (measured: exact to float32 rounding)
        np.testing.assert_allclose(after, before, atol=0.03)


def test_bodies_at_rest_stay_exactly_at_rest():
    """No contact and zero velocity: friction stops exactly, so positions and angles are
    bit-identical after STEPS steps, while the pusher moves about far away."""
    pos = [[-0.7, -0.7], [0.0, 0.0], [0.45, 0.3], [-0.3, 0.6], [0.5, -0.5]]
    bodies = make_bodies(pos, [BLOCK, DISC, BAR, BAR], angle=[0.0, 0.3, -1.0, 2.0, 0.7])
    wiggle = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]] * (STEPS // 4))
    final, trace = run_one(bodies, 0.5 * wiggle)
    np.testing.assert_array_equal(final.pos[1:], bodies.pos[1:])
    np.testing.assert_array_equal(final.angle[1:], bodies.angle[1:])
    np.testing.assert_array_equal(trace.vel[:, 1:], 0.0)
    assert np.abs(trace.pos[:, 0] - bodies.pos[0]).max() > 0.04  # the pusher did move


def test_rollouts_are_deterministic(random_pushing):
    """Same inputs, bit-identical outputs, batched and single."""
    bodies0, _, trace = random_pushing
    actions = random_actions()[0]
    _, again = run_batch(bodies0, actions)
    np.testing.assert_array_equal(again.pos, trace.pos[:, :STEPS])
    one = jax.tree.map(lambda x: x[0], bodies0)
    a = run_one(one, actions[0])
    b = run_one(one, actions[0])
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_vmap_equals_a_loop_over_tables(random_pushing):
    """``vmap`` changes nothing: each table of the batch rolls out as it does alone."""
    bodies0, _, trace = random_pushing
    actions = random_actions()[0]
    for i in range(4):
        _, alone = run_one(jax.tree.map(lambda x, i=i: x[i], bodies0), actions[i])
        # XLA may fuse the batched and single programs differently (float32 reassociation),
        # and contact is a discontinuous function of position over 60 steps: allow 1e-5.
        np.testing.assert_allclose(alone.pos, trace.pos[i, :STEPS], atol=1e-5)
        np.testing.assert_allclose(alone.angle, trace.angle[i, :STEPS], atol=1e-5)


def test_a_disc_pushed_at_constant_speed_moves_with_the_pusher():
    """The heavy, velocity-servoed pusher pushes a touching disc along at its own speed: the
    disc stays in contact in front of it, on the push line, and the pusher barely slows."""
    speed = 0.1
    bodies = make_bodies([[-0.6, 0.0], [-0.44, 0.0]], [DISC])  # touching: 0.06 + 0.1
    _, trace = run_one(bodies, np.tile([[speed, 0.0]], (STEPS, 1)))
    travel = speed * CONTROL_DT * STEPS  # 0.6 commanded
    pusher_dx = float(trace.pos[-1, 0, 0] - bodies.pos[0, 0])
    disc_dx = float(trace.pos[-1, 1, 0] - bodies.pos[1, 0])
    print(f"commanded {travel:.3f}, pusher moved {pusher_dx:.4f}, disc moved {disc_dx:.4f}")
    # mass ratio 1:20, so contact slows the pusher by ~5 % at most
    assert pusher_dx > 0.9 * travel
    # the disc is carried along, staying within 0.01 of contact
    np.testing.assert_allclose(disc_dx, pusher_dx, atol=0.01)
    gap = np.linalg.norm(trace.pos[:, 1] - trace.pos[:, 0], axis=-1) - 0.16
    assert np.abs(gap[5:]).max() < 0.01
    assert np.abs(trace.pos[:, 1, 1]).max() < 1e-4  # symmetric push: no sideways drift
