"""Subtask labels from the simulator (issue 27) on hand-built episodes: boundaries, order,
the end, objects already home, accidents; and the frame -> physics reconstruction the
predicates read, against the env's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.envs import make
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.subtasks import (
    NO_SUBTASK,
    assign,
    label_episode,
    observation,
    physics_from_obs,
)

RED, GREEN, BLUE, YELLOW = range(4)
BLOCK, DISC, BAR = range(3)
C = 0.72
ZONES = np.array([[-C, -C], [-C, C], [C, -C], [C, C]], np.float32)  # zone of each colour
SORT = F.get("sort").row(phrasing=0)


def path(start, end, frames: int) -> np.ndarray:
    """``[frames, 2]`` straight line from start to end (both included)."""
    return np.linspace(start, end, frames).astype(np.float32)


def hold(p, frames: int) -> np.ndarray:
    return np.repeat(np.asarray(p, np.float32)[None], frames, 0)


def episode(tracks, colour, shape, pusher=None) -> np.ndarray:
    """Observations ``[T, D]`` of objects following ``tracks`` (a ``[T, 2]`` path each)."""
    objects = np.stack(tracks, 1)
    pusher = np.zeros((len(objects), 2), np.float32) if pusher is None else pusher
    return observation(pusher, objects, colour, shape, ZONES)


def texts(labels) -> list[str]:
    return list(labels.texts)


def test_sort_one_subtask_per_unsorted_object_in_the_order_worked_on():
    """Red is pushed home (entering at frame 10), then green (entering at 20); blue starts
    in its zone and gets no subtask; frames after the last predicate holds are NO_SUBTASK."""
    red = np.concatenate([path((0.0, 0.0), (-0.6, -0.6), 11)[:10], hold((-0.6, -0.6), 20)])
    green = np.concatenate([hold((0.1, 0.1), 10), path((0.1, 0.1), (-0.6, 0.6), 11)[:10],
                            hold((-0.6, 0.6), 10)])  # fmt: skip
    blue = hold((0.7, -0.7), 30)
    obs = episode([red, green, blue], [RED, GREEN, BLUE], [BLOCK, DISC, BAR])
    labels = label_episode(obs, SORT)
    assert texts(labels) == [
        "push the red block into the red zone",
        "push the green disc into the green zone",
    ]
    # the red block is inside its zone (|x + 0.72| < 0.2) from the first frame at x < -0.52
    first_red_home = int(np.argmax(np.abs(red[:, 0] + C) < 0.2))
    first_green_home = int(np.argmax(np.abs(green[:, 0] + C) < 0.2))
    assert 0 < first_red_home < first_green_home < 30
    want = np.full(30, NO_SUBTASK)
    want[:first_red_home] = 0
    want[first_red_home:first_green_home] = 1
    np.testing.assert_array_equal(labels.subtask, want)
    assert labels.text_at(0) == "push the red block into the red zone"
    assert labels.text_at(29) == ""
    # the subtask's structured form is a push task row on the object's own colour
    push = F.get("push")
    assert labels.subtasks[1].row == push.row(colour=GREEN, shape=DISC, zone=GREEN, phrasing=0)
    assert labels.subtasks[1].targets == (1, -1)


def test_the_order_follows_the_episode_not_the_slots():
    """Green (slot 1) is pushed first, then red (slot 0): the labels follow the motion."""
    green = np.concatenate([path((0.1, 0.1), (-0.6, 0.6), 10), hold((-0.6, 0.6), 10)])
    # red stops just outside its zone: the state after the last action is not stored
    red = np.concatenate([hold((0.0, -0.1), 10), path((0.0, -0.1), (-0.5, -0.5), 10)])
    obs = episode([red, green], [RED, GREEN], [BLOCK, DISC])
    labels = label_episode(obs, SORT)
    assert texts(labels) == [
        "push the green disc into the green zone",
        "push the red block into the red zone",
    ]
    # a recording that stops on success never stores the last predicate holding: the last
    # subtask runs to the last frame
    assert labels.subtask[-1] == 1 and (labels.subtask >= 0).all()


def test_an_object_knocked_home_by_accident_never_becomes_active():
    """While the red block is pushed (far), the green disc is nudged into its zone a
    little way: green drops out without a subtask; red stays active until it is home."""
    red = path((0.3, -0.3), (-0.6, -0.6), 20)
    green = np.concatenate([hold((-0.45, 0.6), 5), path((-0.45, 0.6), (-0.6, 0.6), 5),
                            hold((-0.6, 0.6), 10)])  # fmt: skip
    obs = episode([red, green], [RED, GREEN], [BLOCK, DISC])
    labels = label_episode(obs, SORT)
    assert texts(labels) == ["push the red block into the red zone"]
    home = int(np.argmax(np.abs(red[:, 0] + C) < 0.2))
    green_home = int(np.argmax(np.abs(green[:, 0] + C) < 0.2))
    assert 0 < green_home < home
    assert (labels.subtask[:home] == 0).all() and (labels.subtask[home:] == NO_SUBTASK).all()


def test_an_object_knocked_out_of_its_zone_is_a_subtask_again():
    """Red goes home (frame 10), is knocked out (frame 15) while green is pushed, and is
    pushed home again after green: red, green, red."""
    red = np.concatenate([
        path((0.0, -0.3), (-0.6, -0.6), 10), hold((-0.6, -0.6), 5),
        hold((-0.3, -0.3), 5), path((-0.3, -0.3), (-0.6, -0.6), 10),
    ])  # fmt: skip
    green = np.concatenate([hold((0.1, 0.2), 10), path((0.1, 0.2), (-0.6, 0.6), 10),
                            hold((-0.6, 0.6), 10)])  # fmt: skip
    obs = episode([red, green], [RED, GREEN], [BLOCK, DISC])
    labels = label_episode(obs, SORT)
    assert texts(labels) == [
        "push the red block into the red zone",
        "push the green disc into the green zone",
        "push the red block into the red zone",
    ]
    changes = np.flatnonzero(np.diff(labels.subtask)) + 1
    assert labels.subtask[0] == 0 and list(labels.subtask[changes]) == [1, 2, NO_SUBTASK]


def test_a_sorted_table_and_a_pushed_object_already_home_have_no_subtask():
    """Everything home from the start: no subtask at all; push whose object starts in the
    named zone: none either."""
    obs = episode([hold((-0.6, -0.6), 5), hold((-0.6, 0.6), 5)], [RED, GREEN], [BLOCK, DISC])
    labels = label_episode(obs, SORT)
    assert labels.subtasks == () and (labels.subtask == NO_SUBTASK).all()
    row = F.get("push").row(colour=GREEN, shape=DISC, zone=GREEN, phrasing=3)
    labels = label_episode(obs, row)
    assert labels.subtasks == () and (labels.subtask == NO_SUBTASK).all()


def test_single_subtask_families_end_when_their_predicate_holds():
    """push, reach and gather are one subtask, the task in its first template, active until
    the family's own predicate holds — whatever phrasing (template or grammar) the row has."""
    red = path((0.0, 0.0), (0.6, 0.6), 12)  # towards the yellow zone
    green = hold((-0.3, 0.3), 12)
    obs = episode([red, green], [RED, GREEN], [BLOCK, DISC])
    push = F.get("push").row(colour=RED, shape=BLOCK, zone=YELLOW, phrasing=1007)
    labels = label_episode(obs, push)
    assert texts(labels) == ["push the red block into the yellow zone"]
    home = int(np.argmax(np.abs(red[:, 0] - C) < 0.2))
    assert (labels.subtask[:home] == 0).all() and (labels.subtask[home:] == NO_SUBTASK).all()
    # reach: the pusher walks into the blue zone
    pusher = path((0.0, 0.0), (0.7, -0.7), 12)
    obs = episode([green], [GREEN], [DISC], pusher=pusher)
    labels = label_episode(obs, F.get("reach").row(zone=BLUE, phrasing=2))
    assert texts(labels) == ["move the gripper to the blue zone"]
    home = int(np.argmax(np.abs(pusher[:, 0] - C) < 0.2))
    assert (labels.subtask[:home] == 0).all() and (labels.subtask[home:] == NO_SUBTASK).all()
    # gather: two discs (radius 0.1) close in; next to each other once the gap is < 0.05
    a = path((-0.5, 0.0), (-0.19, 0.0), 12)
    b = hold((0.0, 0.0), 12)
    obs = episode([a, b], [RED, BLUE], [DISC, DISC])
    row = F.get("gather").row(colour=RED, shape=DISC, colour2=BLUE, shape2=DISC, phrasing=0)
    labels = label_episode(obs, row)
    assert texts(labels) == ["push the red disc next to the blue disc"]
    touching = int(np.argmax(np.abs(a[:, 0]) - 0.2 < 0.05))
    assert 0 < touching < 12
    assert (labels.subtask[:touching] == 0).all()
    assert (labels.subtask[touching:] == NO_SUBTASK).all()


def test_assign_on_hand_made_predicates():
    """The timing rule on its own: ties go to the lowest slot; the candidate that moves most
    until the next completion is chosen; a candidate done at the choice is skipped."""
    done = np.zeros((6, 3), bool)
    done[3:, 1] = True  # candidate 1 completes at frame 3
    done[5:, 2] = True
    done[:, 0] = True  # candidate 0 is done throughout
    moved = np.zeros((6, 3))
    label, order = assign(done, moved)
    assert order == [1, 2] and list(label) == [0, 0, 0, 1, 1, NO_SUBTASK]
    moved[:, 2] = 1.0  # candidate 2 moves from the start: it is the one worked on
    label, order = assign(done, moved)
    assert order == [2] and list(label) == [0, 0, 0, 0, 0, NO_SUBTASK]


def test_frames_rebuild_the_physics_the_env_judges():
    """physics_from_obs on env observations gives the env's positions, colours, shapes and
    zones, and every family's predicate says what it says on the env's own physics — on
    random resets and on tables where the objects (and pusher) were moved near zones, so
    the predicates are true as well as false."""
    env = make("tabletop", num_objects=4)
    k_reset, k_move = jax.random.split(jax.random.key(5))
    physics = jax.vmap(env.reset)(jax.random.split(k_reset, 32)).physics
    # the second half: every body near the zone of its colour (the pusher near red's)
    own = jnp.take_along_axis(physics.zones, jnp.maximum(physics.colour, 0)[..., None], axis=1)
    near = jnp.concatenate([physics.zones[:, :1], own], 1)
    near = near + 0.15 * jax.random.normal(k_move, near.shape)
    pos = jnp.where(jnp.arange(32)[:, None, None] >= 16, near, physics.bodies.pos)
    physics = physics.replace(bodies=physics.bodies.replace(pos=pos))

    @jax.jit
    def judge(physics):
        obs = jax.vmap(env.observe)(physics)
        rebuilt = jax.vmap(physics_from_obs)(obs, physics.task, physics.targets)
        fams = F.registered()
        said = [jax.vmap(lambda q, f=f: f.success(env, q))(rebuilt) for f in fams]
        truth = [jax.vmap(lambda q, f=f: f.success(env, q))(physics) for f in fams]
        return rebuilt, jnp.stack(said), jnp.stack(truth)

    rebuilt, said, truth = judge(physics)
    np.testing.assert_array_equal(said, truth)
    assert truth.any() and not truth.all()
    # absent slots are zero in the observation: only present bodies can be compared
    present = np.asarray(physics.colour) >= 0
    body = np.concatenate([np.ones((32, 1), bool), present], 1)
    np.testing.assert_allclose(
        np.asarray(rebuilt.bodies.pos)[body], np.asarray(physics.bodies.pos)[body], atol=1e-6
    )
    np.testing.assert_array_equal(rebuilt.colour, physics.colour)
    np.testing.assert_array_equal(rebuilt.shape, physics.shape)
    np.testing.assert_array_equal(rebuilt.zones, physics.zones)
    # angles come back wrapped by atan2: compare orientations
    da = np.asarray(rebuilt.bodies.angle - physics.bodies.angle)[:, 1:][present]
    np.testing.assert_allclose(np.cos(da), 1.0, atol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="not a tabletop state"):
        label_episode(np.zeros((3, 10), np.float32), SORT)
    with pytest.raises(ValueError, match="no task family has code 9"):
        label_episode(np.zeros((3, 4 + 14 + 8), np.float32), (9, -1, -1, -1, -1, -1))
    assert T.content(SORT) == (F.get("sort").code, -1, -1, -1, -1, -1)
