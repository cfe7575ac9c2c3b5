"""Subtask labels from the simulator (issue 27): which step of its task each frame of a
tabletop episode works on, from the frames alone.

**Decomposition** (each family's ``TaskFamily.subtasks``): *sort* decomposes into one push
per object on the table, "push the red block into the red zone" (a push task row, its zone
the object's own colour); *reach*, *push* and *gather* are one subtask each, the task itself
in its canonical phrasing (the first template). Approach and push are not separate subtasks:
the expert's push skill switches between approaching and pushing from step to step (it is
stateless), so that split is a motor phase, not a decision language should carry; and so a
sort subtask and a push task on the same object have the same text.

**Timing** (:func:`assign`, pure numpy): a subtask is *chosen* at the first frame, or at the
frame where the active one's predicate starts to hold, and stays active until (not
including) the first frame its own predicate holds. The chosen one is, among the subtasks
whose predicate does not hold at that frame, the one the episode actually works on: the one
whose object moves the most from that frame until the next frame any of them completes (or
the episode ends); ties go to the lowest slot. So an object already in its zone when the
choice is made gets no subtask, an object knocked in by accident drops out without ever
being active, and one knocked out of its zone later is a candidate again. Frames where every
predicate holds are labelled :data:`NO_SUBTASK`.

**Predicates** are the families' own ``success`` on the physics rebuilt from each frame's
observation (:func:`physics_from_obs`: positions, orientations, colours, shapes, zones), with
the subtask's row as the task: exactly what the env would say.

**Frames** are what the episode store records: frame ``t`` is the state *before* action
``t``. A recording that stops on success never stores the state after its last action, so
there the last subtask is active to the last frame; an episode that keeps running after its
task is done (a deployment without ``terminate_on_success``) ends with ``NO_SUBTASK`` frames.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import Tabletop, TabletopPhysics, make_bodies
from anyskill.envs.tabletop.families.base import Subtask

#: label of a frame where no subtask is active (every predicate holds)
NO_SUBTASK = -1
#: per object slot: x, y, cos, sin, vx, vy, present, colour one-hot (4), shape one-hot (3)
_SLOT = 14


@dataclasses.dataclass(frozen=True)
class EpisodeSubtasks:
    """One episode's subtask labels.

    subtask:  [T] int32 index into ``subtasks`` of the subtask active at each frame
              (NO_SUBTASK: none)
    subtasks: the subtasks in the order they became active (one may appear twice when its
              object was knocked out of its zone and pushed back)
    """

    subtask: np.ndarray
    subtasks: tuple[Subtask, ...]

    @property
    def texts(self) -> tuple[str, ...]:
        """Canonical text of each of ``subtasks``."""
        return tuple(T.instruction(s.row) for s in self.subtasks)

    def text_at(self, t: int) -> str:
        """The active subtask's text at frame ``t`` ("" when none is active)."""
        k = int(self.subtask[t])
        return "" if k == NO_SUBTASK else T.instruction(self.subtasks[k].row)


def num_objects_of(obs_dim: int) -> int:
    """Object slots of a tabletop observation of ``obs_dim`` features (``4 + 14 N + 8``)."""
    n, rest = divmod(obs_dim - 12, _SLOT)
    if rest or not 1 <= n <= len(T.COLOURS):
        raise ValueError(
            f"an observation of {obs_dim} features is not a tabletop state (4 + 14 N + 8 "
            f"features for N = 1..{len(T.COLOURS)} objects)"
        )
    return n


def table_of(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(colour [N], shape [N])`` of the object slots (-1 absent) in one observation."""
    obs = np.asarray(obs)
    n = num_objects_of(obs.shape[-1])
    slots = obs[4 : 4 + _SLOT * n].reshape(n, _SLOT)
    present = slots[:, 6] > 0.5
    colour = np.where(present, slots[:, 7:11].argmax(-1), -1)
    shape = np.where(present, slots[:, 11:14].argmax(-1), -1)
    return colour.astype(np.int32), shape.astype(np.int32)


def observation(pusher, objects, colour, shape, zones, angle=None) -> np.ndarray:
    """The observation ``[..., 4 + 14 N + 8]`` of a table built by hand (tests, tools):
    ``pusher`` ``[..., 2]``, ``objects`` ``[..., N, 2]`` positions, ``colour``/``shape``
    ``[N]`` (-1: absent slot), ``zones`` ``[4, 2]`` centres by colour, ``angle`` ``[..., N]``
    (default 0); velocities 0. The layout is the env's (``Tabletop.observe``)."""
    objects = np.asarray(objects, np.float32)
    lead, n = objects.shape[:-2], objects.shape[-2]
    colour, shape = np.asarray(colour), np.asarray(shape)
    angle = np.zeros((*lead, n), np.float32) if angle is None else np.asarray(angle, np.float32)
    present = colour >= 0
    slots = np.zeros((*lead, n, _SLOT), np.float32)
    slots[..., 0:2] = objects
    slots[..., 2], slots[..., 3] = np.cos(angle), np.sin(angle)
    slots[..., 6] = present
    slots[..., 7:11] = np.eye(len(T.COLOURS), dtype=np.float32)[np.maximum(colour, 0)]
    slots[..., 11:14] = np.eye(len(T.SHAPES), dtype=np.float32)[np.maximum(shape, 0)]
    slots = np.where(present[:, None], slots, 0.0)
    pusher = np.broadcast_to(np.asarray(pusher, np.float32), (*lead, 2))
    zones = np.broadcast_to(np.asarray(zones, np.float32).reshape(8), (*lead, 8))
    head = np.concatenate([pusher, np.zeros((*lead, 2), np.float32)], -1)
    return np.concatenate([head, slots.reshape(*lead, n * _SLOT), zones], -1)


def physics_from_obs(obs: jax.Array, task: jax.Array, targets: jax.Array) -> TabletopPhysics:
    """The physics state one observation ``[4 + 14 N + 8]`` shows (what a predicate reads:
    positions, orientations, velocities, colours, shapes, zones), with ``task`` [7] as its
    task row and ``targets`` [2] the slots it names. Masses are the env's; seed and faults 0."""
    n = num_objects_of(obs.shape[-1])
    slots = obs[4 : 4 + _SLOT * n].reshape(n, _SLOT)
    present = slots[:, 6] > 0.5
    colour = jnp.where(present, jnp.argmax(slots[:, 7:11], -1), -1).astype(jnp.int32)
    shape = jnp.where(present, jnp.argmax(slots[:, 11:14], -1), -1).astype(jnp.int32)
    bodies = make_bodies(
        jnp.concatenate([obs[None, 0:2], slots[:, 0:2]]),
        jnp.concatenate([jnp.zeros(1), jnp.arctan2(slots[:, 3], slots[:, 2])]),
        jnp.concatenate([obs[None, 2:4], slots[:, 4:6]]),
        shape,
        present,
    )
    return TabletopPhysics(
        bodies=bodies,
        colour=colour,
        shape=shape,
        zones=obs[4 + _SLOT * n : 4 + _SLOT * n + 8].reshape(4, 2),
        task=jnp.asarray(task, jnp.int32),
        targets=jnp.asarray(targets, jnp.int32),
        seed=jnp.asarray(0, jnp.uint32),
        faults=jnp.asarray(0, jnp.int32),
    )


@functools.cache
def _predicate_fn(num_objects: int, codes: tuple[int, ...]):
    """Jitted ``[T, D] x [K, 7] x [K, 2] -> [T, K]`` for rows of the families ``codes``
    (dispatching over those alone keeps the compilation small)."""
    env = Tabletop(families=("reach",), num_objects=num_objects)
    fams = [F.by_code(c) for c in codes]

    def holds(obs, task, targets):
        physics = physics_from_obs(obs, task, targets)
        return F.dispatch(task[T.FAMILY], fams, lambda f: jnp.asarray(f.success(env, physics)))

    over_subtasks = jax.vmap(holds, in_axes=(None, 0, 0))
    return jax.jit(jax.vmap(over_subtasks, in_axes=(0, None, None)))


def predicates(obs: np.ndarray, subtasks: tuple[Subtask, ...]) -> np.ndarray:
    """``[T, K]`` bool: whether subtask ``k``'s predicate (its family's ``success``) holds in
    frame ``t`` of ``obs`` ``[T, D]``."""
    obs = np.asarray(obs, np.float32)
    n_t, k = len(obs), len(subtasks)
    if n_t == 0 or k == 0:
        return np.zeros((n_t, k), bool)
    # padded to few shapes (T to a multiple of 256, K to 4): episodes share one compilation
    t_pad, k_pad = -(-n_t // 256) * 256, max(4, k)
    obs_p = np.concatenate([obs, np.repeat(obs[-1:], t_pad - n_t, 0)])
    rows = np.array([s.row for s in subtasks] * k_pad, np.int32)[:k_pad]
    targets = np.array([s.targets for s in subtasks] * k_pad, np.int32)[:k_pad]
    codes = tuple(sorted({s.row[T.FAMILY] for s in subtasks}))
    fn = _predicate_fn(num_objects_of(obs.shape[-1]), codes)
    return np.asarray(fn(obs_p, rows, targets))[:n_t, :k]


def motion(obs: np.ndarray, subtasks: tuple[Subtask, ...]) -> np.ndarray:
    """``[T, K]``: how far subtask ``k``'s object (the pusher for one that names none) moves
    between frame ``t`` and ``t + 1`` (0 at the last frame)."""
    obs = np.asarray(obs, np.float64)
    cols = [4 + _SLOT * s.targets[0] if s.targets[0] >= 0 else 0 for s in subtasks]
    pos = np.stack([obs[:, c : c + 2] for c in cols], 1) if cols else np.zeros((len(obs), 0, 2))
    step = np.linalg.norm(np.diff(pos, axis=0), axis=-1)
    return np.concatenate([step, np.zeros((1, len(cols)))]) if len(obs) else step


def assign(done: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The timing rule of the module docstring on ``done`` ``[T, K]`` (predicate of
    candidate ``k`` holds at frame ``t``) and ``moved`` ``[T, K]`` (how far its object moves
    after frame ``t``): ``(label [T] int32 index into order, order)`` where ``order`` lists
    the candidates in the order they became active."""
    done = np.asarray(done, bool)
    moved = np.asarray(moved, np.float64)
    n_t, k = done.shape
    label = np.full(n_t, NO_SUBTASK, np.int32)
    order: list[int] = []
    active = None
    for t in range(n_t):
        if active is None or done[t, active]:
            todo = np.flatnonzero(~done[t])
            if len(todo) == 0:
                active = None
                continue
            # the window: until the first later frame where a candidate's predicate holds
            later = done[t + 1 :, todo].any(1)
            end = t + 1 + int(np.argmax(later)) if later.any() else n_t
            work = moved[t:end, todo].sum(0)
            active = int(todo[np.argmax(work)])  # argmax: the first (lowest) on ties
            order.append(active)
        label[t] = len(order) - 1
    return label, order


def label_episode(obs: np.ndarray, task) -> EpisodeSubtasks:
    """Subtask labels of one tabletop episode from its frames ``obs`` ``[T, 4 + 14 N + 8]``
    (``observation.state`` as the store records it) and its task: a task row, or its
    content (:func:`anyskill.envs.tabletop.tasks.content`, as ``tasks.parse_instruction``
    recovers it from the instruction)."""
    obs = np.asarray(obs, np.float32)
    if obs.ndim != 2:
        raise ValueError(f"obs must be [T, obs_dim], got shape {obs.shape}")
    content = tuple(int(v) for v in task)[: T.PHRASING]
    if len(content) != T.PHRASING:
        raise ValueError(f"task must be a task row or its content, got {tuple(task)}")
    family = F.by_code(content[T.FAMILY])
    if len(obs) == 0:
        return EpisodeSubtasks(np.zeros(0, np.int32), ())
    colour, shape = table_of(obs[0])
    candidates = family.subtasks((*content, 0), colour, shape)
    label, order = assign(predicates(obs, candidates), motion(obs, candidates))
    return EpisodeSubtasks(label, tuple(candidates[k] for k in order))
