"""Task families as files in a registry: stable codes, registration errors, dispatch by code
(not by position), a toy family registered from this file running through the env and the
expert, and the built-in families checked against independent plain-Python versions of
their task enumeration, predicates and goal states."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.envs.tabletop import ScriptedExpert, Tabletop
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.families.base import ExpertTarget, TaskFamily
from anyskill.envs.tabletop.scene import ZONE_HALF

CENTRE_RADIUS = 0.1


@dataclasses.dataclass(frozen=True)
class Centre(TaskFamily):
    """Toy family: move the pusher to the centre of the table (within CENTRE_RADIUS)."""

    def task_rows(self):
        return [self.row(phrasing=p) for p in range(len(self.templates))]

    def goal(self, env, physics):
        return jnp.zeros(2), physics.bodies.pos[1:]

    def success(self, env, physics):
        p = physics.bodies.pos[0]
        return jnp.sqrt(p[0] ** 2 + p[1] ** 2) < CENTRE_RADIUS

    def expert_target(self, physics, style):
        return ExpertTarget.walk_to(jnp.zeros(2))


# code 40: far from the built-ins' 0-3, so a positional lookup could not find it
CENTRE = Centre(
    name="centre",
    code=40,
    templates=("move the gripper to the centre", "go to the middle", "head for the centre"),
    episode_length=30,
)


@pytest.fixture
def centre():
    """The toy family, registered for one test only (the built-in tests see 4 families)."""
    F.register(CENTRE)
    yield CENTRE
    F.unregister(CENTRE.name)


BUILTIN = ("reach", "push", "sort", "gather")


# ---- the registry ----------------------------------------------------------------------------
def test_builtin_codes_are_the_recorded_ones():
    """Datasets and seeds store these codes: they must never change."""
    assert {f.name: f.code for f in F.registered()} == {
        "reach": 0,
        "push": 1,
        "sort": 2,
        "gather": 3,
    }
    assert F.names() == T.FAMILIES == BUILTIN  # ordered by code
    assert T.EPISODE_LENGTH == {"reach": 40, "push": 100, "sort": 200, "gather": 100}
    assert T.MIN_OBJECTS == {"reach": 0, "push": 1, "sort": 2, "gather": 2}
    for name in T.FAMILIES:
        assert T.family_name(T.family_code(name)) == name
        assert F.get(name).heldout_phrasing == T.HELDOUT_PHRASING


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown task family 'pussh'\. Did you mean 'push'"):
        F.get("pussh")
    with pytest.raises(ValueError, match=r"unknown task family 'sortt'\. Did you mean 'sort'"):
        T.family_code("sortt")
    with pytest.raises(ValueError, match=r"no task family has code 9; known codes: 0 \(reach\)"):
        T.family_name(9)
    with pytest.raises(ValueError, match=r"has code 1, already used by 'push'"):
        F.register(dataclasses.replace(CENTRE, code=1))
    with pytest.raises(ValueError, match=r"'push' is already registered"):
        F.register(dataclasses.replace(CENTRE, name="push", code=41))
    with pytest.raises(ValueError, match=r"unknown placeholders \['size'\]"):
        dataclasses.replace(CENTRE, templates=("go {size}", "go"))
    with pytest.raises(ValueError, match=r"needs at least 2 templates"):
        dataclasses.replace(CENTRE, templates=("go",))
    with pytest.raises(ValueError, match=r"code must be an int >= 0, got -1"):
        dataclasses.replace(CENTRE, code=-1)

    @dataclasses.dataclass(frozen=True)
    class NamesAZone(Centre):
        def task_rows(self):  # a template that needs a zone the rows do not name
            return [self.row(phrasing=0)]

    with pytest.raises(ValueError, match=r"cannot fill template 'go to the \{zone\}'"):
        F.register(
            NamesAZone(
                name="broken", code=42, templates=("go to the {zone}", "x"), episode_length=5
            )
        )
    assert "centre" not in F.names() and "broken" not in F.names()  # nothing half-registered


def test_dispatch_and_lookup_select_by_code_not_position():
    """Families given in any order, with gaps between codes: each code reaches its own
    branch, batched and unbatched, for array and pytree outputs."""
    fams = [dataclasses.replace(CENTRE, name=f"toy{c}", code=c) for c in (7, 2, 5)]
    codes = jnp.array([2, 5, 7, 5], jnp.int32)

    def both(code):
        out = F.dispatch(code, fams, lambda f: (jnp.float32(10 * f.code), jnp.full(3, f.code)))
        return out, F.lookup(code, fams, lambda f: f.code + 100)

    (tens, full), plus = jax.jit(jax.vmap(both))(codes)
    np.testing.assert_array_equal(tens, [20, 50, 70, 50])
    np.testing.assert_array_equal(full, np.repeat(np.asarray(codes)[:, None], 3, 1))
    np.testing.assert_array_equal(plus, [102, 105, 107, 105])
    single = jax.jit(both)
    for c in (2, 5, 7):
        (ten, three), hundred = single(jnp.int32(c))
        assert (int(ten), three.tolist(), int(hundred)) == (10 * c, [c] * 3, c + 100)


# ---- a family added from a test file ---------------------------------------------------------
def test_a_family_registered_from_a_test_file_is_dispatched_by_code(centre, resets):
    """The toy family (code 40) next to reach (code 0), listed in the opposite order: on
    reset states relabelled half centre, half reach, the env's goal state, predicate and
    episode limit and the expert's action are each family's own. No physics is compiled
    (the full toy episode is the slow test below)."""
    assert T.FAMILIES[-1] == "centre" and T.family_code("centre") == 40
    assert T.family_name(40) == "centre" and T.EPISODE_LENGTH["centre"] == 30
    rows, _ = T.task_table(("centre",), "train")
    assert [T.instruction(r) for r in rows] == list(CENTRE.templates[:-1])
    heldout, _ = T.task_table(("centre",), "heldout")
    assert [T.instruction(r) for r in heldout] == [CENTRE.templates[-1]]
    assert T.is_heldout(heldout[0]) and not T.is_heldout(rows[0])

    env = Tabletop(families=("centre", "reach"), num_objects=3, name="tabletop-centre-reach")
    assert env.episode_length == 40
    expert = ScriptedExpert(env, noise=0.0)
    host = jax.device_get(resets.replace(key=None))
    n = len(host.t)
    is_centre = np.arange(n) % 2 == 0
    zone = np.arange(n) % 4
    task = np.where(
        is_centre[:, None],
        np.array(CENTRE.row(phrasing=0), np.int32),
        np.stack([np.array(F.get("reach").row(zone=z, phrasing=1), np.int32) for z in zone]),
    )
    rng = np.random.default_rng(1)
    pos = np.array(host.physics.bodies.pos)
    pos[:, 0] = rng.uniform(-0.9, 0.9, (n, 2))
    # a few pushers just inside / outside the centre disc, and inside the named zone
    angle = rng.uniform(-np.pi, np.pi, 10)
    radius = np.where(np.arange(10) % 2 == 0, CENTRE_RADIUS - 0.01, CENTRE_RADIUS + 0.01)
    pos[0:20:2, 0] = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    named = host.physics.zones[np.arange(1, 20, 2), zone[1:20:2]]
    pos[1:20:2, 0] = named + rng.uniform(-0.9, 0.9, (10, 2)) * ZONE_HALF
    physics = host.physics.replace(task=task, bodies=host.physics.bodies.replace(pos=pos))

    @jax.jit
    @jax.vmap
    def judge(physics):
        return (
            env.goal_state(physics),
            env.task_success(physics, None, None),
            env.episode_limit(physics),
            expert.act(physics, jax.random.key(0)),
        )

    goal, success, limit, action = jax.device_get(judge(physics))
    p = pos[:, 0]
    target = np.where(is_centre[:, None], 0.0, host.physics.zones[np.arange(n), zone])
    np.testing.assert_array_equal(goal[:, :2], target)
    np.testing.assert_array_equal(goal[:, 2:], pos[:, 1:].reshape(n, -1))
    dist = np.linalg.norm(p, axis=-1)
    in_zone = (np.abs(p - target) < ZONE_HALF).all(-1)
    np.testing.assert_array_equal(success, np.where(is_centre, dist < CENTRE_RADIUS, in_zone))
    assert set(success[is_centre]) == set(success[~is_centre]) == {True, False}
    np.testing.assert_array_equal(limit, np.where(is_centre, 30, 40))
    # noise-free expert: straight at the centre; at the zone (within its per-episode aim)
    to_target = target - p
    far = np.linalg.norm(to_target, axis=-1) > 0.3
    cos = (action * to_target).sum(-1) / np.linalg.norm(action, axis=-1)
    cos /= np.linalg.norm(to_target, axis=-1)
    np.testing.assert_allclose(cos[is_centre & far], 1.0, rtol=1e-5)
    assert (cos[~is_centre & far] > 0.95).all()


@pytest.mark.slow
def test_a_family_registered_from_a_test_file_runs_in_the_env_and_the_expert(centre):
    """The toy family is drawn, instructed, goal-conditioned, judged and solved by the
    expert without touching any source file."""
    assert T.FAMILIES[-1] == "centre" and T.family_code("centre") == 40
    env = Tabletop(families=("centre",), num_objects=1, split="all", name="tabletop-centre")
    assert env.episode_length == CENTRE.episode_length
    rows, _ = T.task_table(("centre",), "train")
    assert [T.instruction(r) for r in rows] == list(CENTRE.templates[:-1])
    heldout, _ = T.task_table(("centre",), "heldout")
    assert [T.instruction(r) for r in heldout] == [CENTRE.templates[-1]]
    assert T.is_heldout(heldout[0]) and not T.is_heldout(rows[0])
    expert = ScriptedExpert(env, noise=0.0)
    n, steps = 8, 20

    @jax.jit
    def run(key):
        s0 = jax.vmap(env.reset)(jax.random.split(key, n))

        def body(s, k):
            a = jax.vmap(expert)(s, jax.random.split(k, n))
            s = jax.vmap(env.step)(s, a)
            return s, (s.success, s.terminated | s.truncated, a)

        _, out = jax.lax.scan(body, s0, jax.random.split(key, steps))
        return s0, out

    s0, (success, done, actions) = jax.device_get(run(jax.random.key(0)))
    assert (s0.physics.task[:, T.FAMILY] == 40).all()
    assert set(env.instruction(s0)) <= set(CENTRE.templates)
    assert not s0.success.any()
    # goal: the pusher at the centre, the object where it is
    np.testing.assert_array_equal(s0.goal[:, :2], 0.0)
    np.testing.assert_array_equal(s0.goal[:, 2:], s0.physics.bodies.pos[:, 1])
    # the expert walks straight at the centre (noise 0)
    p = s0.physics.bodies.pos[:, 0]
    dist = np.linalg.norm(p, axis=-1)
    heading = -(actions[0] * p).sum(-1) / (dist * np.linalg.norm(actions[0], axis=-1))
    np.testing.assert_allclose(heading[dist > 0.2], 1.0, rtol=1e-5)
    # every first episode ends in success, near the centre
    end = done.argmax(0)
    assert done.any(0).all() and success[end, np.arange(n)].all()


# ---- the built-ins against independent plain-Python versions ---------------------------------
def original_rows(family: str) -> list[tuple[int, ...]]:
    """The task enumeration as it was written before families became files."""
    f = ("reach", "push", "sort", "gather").index(family)
    cs, ss, ps = range(4), range(3), range(5)
    if family == "reach":
        return [(f, -1, -1, z, -1, -1, p) for z, p in itertools.product(cs, ps)]
    if family == "push":
        return [(f, c, s, z, -1, -1, p) for c, s, z, p in itertools.product(cs, ss, cs, ps)]
    if family == "sort":
        return [(f, -1, -1, -1, -1, -1, p) for p in ps]
    return [
        (f, c, s, -1, c2, s2, p)
        for c, s, c2, s2, p in itertools.product(cs, ss, cs, ss, ps)
        if c != c2
    ]


def original_heldout(row) -> bool:
    combos = {(0, 0, 1), (1, 1, 2), (2, 2, 3), (3, 0, 0)}  # red block -> green, ...
    family, c, s, z, c2, _, p = row
    return p == 4 or (family == 1 and (c, s, z) in combos) or (family == 3 and (c, s, c2) in combos)


def test_task_tables_equal_the_original_enumeration_row_for_row():
    """Envs draw rows by index, so recorded seeds reproduce only if every split's table is
    the original one in the original order."""
    for split in ("train", "heldout", "all"):
        table, offsets = T.task_table(BUILTIN, split)
        expected, sizes = [], [0]
        for family in BUILTIN:
            mine = [
                r
                for r in original_rows(family)
                if split == "all" or original_heldout(r) == (split == "heldout")
            ]
            expected += mine
            sizes.append(sizes[-1] + len(mine))
        assert [tuple(r) for r in table.tolist()] == expected, split
        assert offsets.tolist() == sizes
    assert T.task_table(BUILTIN, "all")[1].tolist() == [0, 20, 260, 265, 805]


def plain_success(family: str, pos, colour, zones, task, targets) -> bool:
    """reach / push / sort predicates written out in numpy (docs/tasks.md)."""

    def inside(p, z):
        return bool(abs(p[0] - z[0]) < ZONE_HALF and abs(p[1] - z[1]) < ZONE_HALF)

    if family == "reach":
        return inside(pos[0], zones[task[T.ZONE]])
    if family == "push":
        return inside(pos[1 + targets[0]], zones[task[T.ZONE]])
    return all(inside(pos[1 + k], zones[c]) for k, c in enumerate(colour) if c >= 0)


def plain_goal(family: str, pos, colour, zones, task, targets) -> np.ndarray:
    goal = np.array(pos, np.float32)
    if family == "reach":
        goal[0] = zones[task[T.ZONE]]
    elif family == "push":
        goal[1 + targets[0]] = zones[task[T.ZONE]]
    else:
        for k, c in enumerate(colour):
            if c >= 0:
                goal[1 + k] = zones[c]
    return goal.reshape(-1)


def test_reach_push_sort_predicates_and_goals_equal_plain_python(env, resets):
    """On reset states with bodies scattered around the zones (inside, outside and near the
    borders), the registry-dispatched predicate and goal state equal the plain-Python ones."""
    host = jax.device_get(resets.replace(key=None))
    rng = np.random.default_rng(0)
    n, bodies = len(host.t), env.num_objects + 1
    # each body near a random zone, offset up to 1.5 zone half-widths per axis
    near = host.physics.zones[np.arange(n)[:, None], rng.integers(0, 4, (n, bodies))]
    pos = (near + rng.uniform(-1.5, 1.5, (n, bodies, 2)) * ZONE_HALF).astype(np.float32)
    physics = host.physics.replace(bodies=host.physics.bodies.replace(pos=pos))

    @jax.jit
    @jax.vmap
    def judge(physics):
        return env.task_success(physics, None, None), env.goal_state(physics)

    success, goal = jax.device_get(judge(physics))
    seen = {name: set() for name in ("reach", "push", "sort")}
    for i in range(n):
        p = jax.tree.map(lambda x, i=i: x[i], physics)
        family = T.family_name(p.task[T.FAMILY])
        if family not in seen:
            continue
        args = (p.bodies.pos, p.colour, p.zones, p.task, p.targets)
        assert bool(success[i]) == plain_success(family, *args), (i, family)
        np.testing.assert_array_equal(goal[i], plain_goal(family, *args), err_msg=f"{i} {family}")
        seen[family].add(bool(success[i]))
    assert all(v == {True, False} for v in seen.values()), seen  # both outcomes tested
