"""Language-instructed top-down tabletop pushing, in pure JAX.

A disc end-effector (the pusher, velocity-controlled) and 1-4 objects (blocks, discs, bars in
four colours) on a walled table with four coloured zones in the corners. Every episode is a
task instance from :mod:`anyskill.envs.tabletop.tasks` (family, objects, zone, phrasing)
with an instruction string, a success predicate and a goal state. What differs between task
families (goal, predicate, episode length) is each family's own code in
:mod:`anyskill.envs.tabletop.families`, selected by the code in the task row.

Observation (``obs_dim = 4 + 14 * num_objects + 8``)::

    pusher   x, y, vx, vy
    object k x, y, cos, sin, vx, vy, present, colour one-hot (4), shape one-hot (3)
    zones    x, y of the zone of each colour (red, green, blue, yellow)

Goal (``goal_dim = 2 + 2 * num_objects``): a goal *state* that satisfies the instruction, in
the space of ``obs[goal_indices]`` = pusher and object positions (targets moved to their
zones, the rest where they started), so goal-conditioned RL can use it OGBench-style:
``is_success(obs, goal)`` is goal reaching (every present object within
``success_threshold`` of its goal position; the pusher too for ``reach``), while
``State.success`` is the instruction's own predicate (``task_success``).

Faults: a non-finite action or physics state never propagates. The action is replaced by
zero, a non-finite physics state ends the episode (the next one starts clean), and
``physics.faults`` counts both for the rest of the env's life; :func:`raise_on_faults` turns
the count into an error on the host.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from anyskill.envs.base import Env, State
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.physics import Bodies, PhysicsParams, box_inertia, control_step
from anyskill.envs.tabletop.scene import (  # noqa: F401  (body_reach, ZONE_HALF: public here)
    PUSHER_RADIUS,
    SHAPE_GEOMETRY,
    ZONE_CENTRE,
    ZONE_HALF,
    body_reach,
)

#: much heavier than an object (mass 1): contact corrections move the object, so a pusher
#: pushes at its commanded speed; it still stalls against jams (see physics._project)
PUSHER_MASS = 20.0
#: spawn grid: objects and the pusher start on distinct cells of a 3x3 grid, jittered
SPAWN_SPACING = 0.42
SPAWN_JITTER = 0.04


@struct.dataclass
class TabletopPhysics:
    """Everything that changes in a tabletop episode.

    bodies:  rigid bodies, body 0 the pusher, body 1 + k object slot k
    colour:  [N] int32 colour index of each object slot (-1: absent)
    shape:   [N] int32 shape index of each object slot (-1: absent)
    zones:   [4, 2] centre of the zone of each colour
    task:    [7] int32 task row (see tasks.py)
    targets: [2] int32 object slots the instruction names (-1: none)
    seed:    [] uint32 per-episode random id (scripted experts derive their style from it)
    faults:  [] int32 non-finite actions or states seen so far (carried across episodes)
    """

    bodies: Bodies
    colour: jax.Array
    shape: jax.Array
    zones: jax.Array
    task: jax.Array
    targets: jax.Array
    seed: jax.Array
    faults: jax.Array


def make_bodies(pos, angle, vel, shapes, present) -> Bodies:
    """The pusher (body 0) and ``n`` object slots as rigid bodies: positions ``[n+1, 2]``,
    angles ``[n+1]``, velocities ``[n+1, 2]``; each slot's geometry from its shape index
    (``shapes`` ``[n]``, -1 for an empty slot), ``present`` ``[n]`` whether it is on the
    table. Masses are the env's; the pusher is a disc of ``PUSHER_RADIUS``."""
    n = shapes.shape[0]
    geom = jnp.asarray(SHAPE_GEOMETRY, jnp.float32)[jnp.maximum(shapes, 0)]
    half = jnp.concatenate([jnp.zeros((1, 2)), geom[:, :2]]).astype(jnp.float32)
    radius = jnp.concatenate([jnp.array([PUSHER_RADIUS]), geom[:, 2]]).astype(jnp.float32)
    mass = jnp.ones(n + 1, jnp.float32).at[0].set(PUSHER_MASS)
    return Bodies(
        pos=pos,
        angle=angle,
        vel=vel,
        angvel=jnp.zeros(n + 1, jnp.float32),
        half=half,
        radius=radius,
        inv_mass=1.0 / mass,
        inv_inertia=1.0 / box_inertia(mass, half, radius),
        active=jnp.concatenate([jnp.array([True]), present]),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Tabletop(Env):
    """Top-down tabletop pushing with language instructions (see module docstring)."""

    families: tuple[str, ...] = T.FAMILIES
    """Task families to draw episodes from (uniformly over families)."""
    num_objects: int = 3
    """Object slots (1-4); each episode places between the family's minimum and this many."""
    split: str = "train"
    """Task instances: 'train', 'heldout' (unseen combinations and phrasings) or 'all'; or a
    part of 'heldout': 'heldout-language' (unseen phrasings of seen combinations),
    'heldout-combination' (unseen combinations in seen phrasings)."""
    instructions: str = "templates"
    """Where instruction text comes from: 'templates' (five fixed phrasings per family, the
    last held out; what every benchmark so far measured) or 'grammar' (each family's
    instruction grammar, with held-out constructions; docs/tasks.md)."""
    image_size: int = 64
    """Side of the square RGB camera image (``render_image``); >= 16."""
    max_speed: float = 1.0
    """Pusher speed (table units/s) at action magnitude 1."""
    control_hz: float = 10.0
    sim: PhysicsParams = PhysicsParams()
    """Physical constants and solver settings."""
    terminate_on_success: bool = True
    """End the episode when the instruction is fulfilled."""
    success_threshold: float = 0.1
    """Goal-reaching tolerance for ``is_success(obs, goal)`` (not the instruction predicate)."""
    name: str = "tabletop"

    action_dim = 2

    def __post_init__(self):
        fams = tuple(self.families)
        object.__setattr__(self, "families", fams)
        if not fams:
            raise ValueError("families must name at least one task family, got ()")
        if not 1 <= self.num_objects <= len(T.COLOURS):
            raise ValueError(
                f"num_objects must be between 1 and {len(T.COLOURS)} (one colour per object: "
                f"{', '.join(T.COLOURS)}), got {self.num_objects}"
            )
        task_families = tuple(F.get(f) for f in fams)  # unknown -> "did you mean"
        need = max(f.min_objects for f in task_families)
        if self.num_objects < need:
            raise ValueError(
                f"families {fams} need at least {need} objects, got num_objects="
                f"{self.num_objects}; raise num_objects or drop the family"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if not self.max_speed > 0:
            raise ValueError(f"max_speed must be > 0, got {self.max_speed}")
        # A substep must not move the pusher more than the thinnest object, or it could tunnel.
        step = self.max_speed * self.sim.dt
        thinnest = float(np.min(SHAPE_GEOMETRY[:, 1] + SHAPE_GEOMETRY[:, 2]))
        if step >= thinnest:
            raise ValueError(
                f"max_speed * physics.dt = {step:.3f} must be below the thinnest object's "
                f"half-width {thinnest:.3f}; lower max_speed or raise physics.substeps"
            )
        period = self.sim.dt * self.sim.substeps
        if abs(period * self.control_hz - 1.0) > 1e-6:
            raise ValueError(
                f"physics.dt * physics.substeps = {period} s must equal 1 / control_hz = "
                f"{1 / self.control_hz} s"
            )
        # validates families, split and instructions
        rows, offsets = T.task_table(fams, self.split, self.instructions)
        empty = [f for f, a, b in zip(fams, offsets[:-1], offsets[1:], strict=True) if a == b]
        if empty:
            raise ValueError(f"families {empty} have no task instance in split {self.split!r}")
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_offsets", offsets)
        object.__setattr__(self, "_task_families", task_families)
        object.__setattr__(self, "episode_length", max(f.episode_length for f in task_families))

    @property
    def task_families(self) -> tuple[F.TaskFamily, ...]:
        """The family objects of ``families`` (resolved in the registry when the env was
        built). Inside jit, behaviour is selected by code among every registered family (see
        ``families.dispatch``), so a state of any family is judged by its own rules."""
        return self._task_families

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return 4 + 14 * self.num_objects + 8

    @property
    def goal_dim(self) -> int:
        return 2 + 2 * self.num_objects

    @property
    def goal_indices(self) -> tuple[int, ...]:
        idx = [0, 1]
        for k in range(self.num_objects):
            idx += [4 + 14 * k, 5 + 14 * k]
        return tuple(idx)

    # ---- episodes -------------------------------------------------------------------------
    def _draw_task(self, u) -> jax.Array:
        n_fam = len(self.families)
        f = jnp.minimum(jnp.floor(u * n_fam).astype(jnp.int32), n_fam - 1)
        offsets = jnp.asarray(self._offsets)
        lo, hi = offsets[f], offsets[f + 1]
        frac = u * n_fam - f
        idx = jnp.minimum(lo + jnp.floor(frac * (hi - lo)).astype(jnp.int32), hi - 1)
        return jnp.asarray(self._rows)[idx]

    def _reset_physics(self, key):
        n = self.num_objects
        k_task, k_perm, k_zone, k_cells, k_jit, k_shape, k_ang, k_n, k_slot, k_seed = (
            jax.random.split(key, 10)
        )
        row = self._draw_task(jax.random.uniform(k_task))
        min_obj = F.lookup(row[T.FAMILY], F.registered(), lambda f: f.min_objects)
        min_obj = jnp.maximum(min_obj, 1)
        n_present = min_obj + jnp.floor(jax.random.uniform(k_n) * (n - min_obj + 1)).astype(
            jnp.int32
        )
        n_present = jnp.minimum(n_present, n)
        present = jnp.arange(n) < n_present
        # Colours: a random permutation, then the named colours swapped into random present
        # slots, so the slot of the target object carries no information.
        colours = jnp.argsort(jax.random.uniform(k_perm, (len(T.COLOURS),)))[:n].astype(jnp.int32)
        shapes = jax.random.randint(k_shape, (n,), 0, len(T.SHAPES)).astype(jnp.int32)
        u_slot = jax.random.uniform(k_slot, (2,))
        slot1 = jnp.minimum(jnp.floor(u_slot[0] * n_present).astype(jnp.int32), n_present - 1)
        off = jnp.floor(u_slot[1] * jnp.maximum(n_present - 1, 1)).astype(jnp.int32)
        slot2 = (slot1 + 1 + off) % jnp.maximum(n_present, 1)
        colours, shapes = _place(colours, shapes, slot1, row[T.COLOUR], row[T.SHAPE])
        colours, shapes = _place(colours, shapes, slot2, row[T.COLOUR2], row[T.SHAPE2])
        has1, has2 = row[T.COLOUR] >= 0, row[T.COLOUR2] >= 0
        targets = jnp.stack([jnp.where(has1, slot1, -1), jnp.where(has2, slot2, -1)])
        colours = jnp.where(present, colours, -1)
        shapes = jnp.where(present, shapes, -1)
        # Zones: zone i has colour i; which corner it occupies is a random permutation.
        corners = ZONE_CENTRE * jnp.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], jnp.float32)
        zones = corners[jnp.argsort(jax.random.uniform(k_zone, (4,)))]
        # Spawn cells: pusher on one cell, objects on others, jittered; cells are far enough
        # apart that no two bodies start in contact.
        cells = jnp.argsort(jax.random.uniform(k_cells, (9,)))[: n + 1]
        grid = SPAWN_SPACING * jnp.stack([cells // 3 - 1, cells % 3 - 1], -1).astype(jnp.float32)
        pos = grid + jax.random.uniform(k_jit, (n + 1, 2), minval=-1.0, maxval=1.0) * SPAWN_JITTER
        angle = jax.random.uniform(k_ang, (n + 1,), minval=-np.pi, maxval=np.pi).at[0].set(0.0)
        bodies = make_bodies(pos, angle, jnp.zeros((n + 1, 2), jnp.float32), shapes, present)
        physics = TabletopPhysics(
            bodies=bodies,
            colour=colours,
            shape=shapes,
            zones=zones,
            task=row,
            targets=targets,
            seed=jax.random.bits(k_seed, (), jnp.uint32),
            faults=jnp.asarray(0, jnp.int32),
        )
        return physics, self.goal_state(physics)

    def step(self, state: State, action: jax.Array) -> State:
        action = self.check_action(jnp.asarray(action, jnp.float32))
        bad_action = ~jnp.all(jnp.isfinite(action))
        faults = state.physics.faults + bad_action.astype(jnp.int32)
        state = state.replace(physics=state.physics.replace(faults=faults))
        return super().step(state, jnp.where(bad_action, 0.0, action))

    def physics_ok(self, physics: TabletopPhysics) -> jax.Array:
        b = physics.bodies
        return jnp.all(jnp.isfinite(b.pos)) & jnp.all(jnp.isfinite(b.angle))

    def carry(self, old: TabletopPhysics, new: TabletopPhysics) -> TabletopPhysics:
        # The fault count outlives episodes; a broken state counts once.
        return new.replace(faults=old.faults + (~self.physics_ok(old)).astype(jnp.int32))

    def _step_physics(self, physics: TabletopPhysics, action):
        bodies = control_step(physics.bodies, action * self.max_speed, self.sim)
        return physics.replace(bodies=bodies)

    def episode_limit(self, physics: TabletopPhysics):
        return F.lookup(physics.task[T.FAMILY], F.registered(), lambda f: f.episode_length)

    # ---- observation, goal, success -------------------------------------------------------
    def observe(self, physics: TabletopPhysics) -> jax.Array:
        b = physics.bodies
        parts = [b.pos[0], b.vel[0]]
        for k in range(self.num_objects):
            present = physics.colour[k] >= 0
            parts += [
                b.pos[k + 1],
                jnp.cos(b.angle[k + 1])[None],
                jnp.sin(b.angle[k + 1])[None],
                b.vel[k + 1],
                present[None].astype(jnp.float32),
                jax.nn.one_hot(physics.colour[k], len(T.COLOURS)),
                jax.nn.one_hot(physics.shape[k], len(T.SHAPES)),
            ]
        parts.append(physics.zones.reshape(-1))
        obs = jnp.concatenate([p.astype(jnp.float32) for p in parts])
        return jnp.where(present_mask(self, physics), obs, 0.0)

    def state_tokens(self) -> tuple[tuple[int, int, int], ...]:
        """The observation's entities as ``(start, stop, kind)`` slices: the pusher (kind 0),
        each object slot (kind 1), each zone in colour order (kind 2) — a transformer policy
        reads one token per entity."""
        n = self.num_objects
        zones = 4 + 14 * n
        return (
            ((0, 4, 0),)
            + tuple((4 + 14 * k, 18 + 14 * k, 1) for k in range(n))
            + tuple((zones + 2 * c, zones + 2 * c + 2, 2) for c in range(len(T.COLOURS)))
        )

    def state_token_words(self) -> tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]:
        """Words naming each of :meth:`state_tokens`: an object's colour and shape one-hots
        (features 7-10 and 11-13 of its slot), each zone's colour."""
        obj = ((7, T.COLOURS), (11, T.SHAPES))
        return (
            ((),)  # the pusher
            + tuple(obj for _ in range(self.num_objects))
            + tuple(((-1, (c,)),) for c in T.COLOURS)
        )

    def goal_state(self, physics: TabletopPhysics) -> jax.Array:
        """A state satisfying the instruction, in goal space (pusher + object positions): the
        task family's ``goal``."""
        n = self.num_objects

        def family_goal(family: F.TaskFamily) -> tuple[jax.Array, jax.Array]:
            pusher, objects = family.goal(self, physics)
            pusher, objects = jnp.asarray(pusher, jnp.float32), jnp.asarray(objects, jnp.float32)
            if pusher.shape != (2,) or objects.shape != (n, 2):
                raise ValueError(
                    f"task family {family.name!r}: goal must return (pusher [2], objects "
                    f"[{n}, 2]), got {pusher.shape} and {objects.shape}"
                )
            return pusher, objects

        pusher, objects = F.dispatch(physics.task[T.FAMILY], F.registered(), family_goal)
        return jnp.concatenate([pusher, objects.reshape(-1)])

    def is_success(self, obs, goal):
        """Goal reaching: every present object (and the pusher) within the threshold."""
        achieved = self.achieved_goal(obs)
        diff = achieved - goal
        ok = jnp.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2) < self.success_threshold
        for k in range(self.num_objects):
            present = obs[..., 10 + 14 * k] > 0.5
            d = jnp.sqrt(diff[..., 2 + 2 * k] ** 2 + diff[..., 3 + 2 * k] ** 2)
            ok = ok & (~present | (d < self.success_threshold))
        return ok

    def task_success(self, physics: TabletopPhysics, obs, goal) -> jax.Array:
        """The instruction's predicate: the task family's ``success``."""

        def family_success(family: F.TaskFamily) -> jax.Array:
            ok = jnp.asarray(family.success(self, physics))
            if ok.shape != () or ok.dtype != jnp.bool_:
                raise ValueError(
                    f"task family {family.name!r}: success must return a bool scalar, got "
                    f"{ok.dtype}{list(ok.shape)}"
                )
            return ok

        return F.dispatch(physics.task[T.FAMILY], F.registered(), family_success)

    # ---- host-side helpers ----------------------------------------------------------------
    def instruction(self, state_or_physics) -> str | list[str]:
        """The instruction of a state (or physics); a list for a batch of envs."""
        physics = getattr(state_or_physics, "physics", state_or_physics)
        task = np.asarray(physics.task)
        if task.ndim == 1:
            return T.instruction(task)
        return [T.instruction(r) for r in task.reshape(-1, T.ROW_WIDTH)]

    def render_image(self, physics: TabletopPhysics, size: int | None = None) -> jax.Array:
        """RGB camera image ``[size, size, 3]`` uint8 of one env (``vmap`` for a batch)."""
        from anyskill.envs.tabletop.render import render_table

        return render_table(physics, size or self.image_size, self.sim.table_half)


def present_mask(env: Tabletop, physics: TabletopPhysics) -> jax.Array:
    """``[obs_dim]`` bool: False on every feature of an absent object slot."""
    parts = [jnp.ones(4, bool)]
    for k in range(env.num_objects):
        parts.append(jnp.broadcast_to(physics.colour[k] >= 0, (14,)))
    parts.append(jnp.ones(8, bool))
    return jnp.concatenate(parts)


def _place(colours, shapes, slot, colour, shape):
    """Put ``colour``/``shape`` at ``slot`` (no-op when ``colour < 0``), swapping the slot
    that held ``colour`` so colours stay distinct."""
    has = colour >= 0
    old = colours[slot]
    where_c = colours == colour
    swapped = jnp.where(where_c, old, colours).at[slot].set(colour)
    # The colour may not be among the first N of the permutation: then just overwrite.
    colours = jnp.where(has, swapped, colours)
    shapes = jnp.where(has, shapes.at[slot].set(jnp.maximum(shape, 0)), shapes)
    return colours, shapes


def raise_on_faults(env: Tabletop, state: State) -> None:
    """Host check: raise if any env saw a non-finite action or physics state."""
    faults = int(np.asarray(state.physics.faults).sum())
    if faults:
        raise FloatingPointError(
            f"{env.name}: {faults} non-finite action(s) or physics state(s) were seen and "
            "neutralised (actions zeroed, broken episodes reset). Check the policy's "
            "outputs for NaN/inf."
        )
