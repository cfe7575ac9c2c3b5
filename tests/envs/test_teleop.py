"""Keyboard teleoperation: keys -> actions for velocity-style, toggled and target actions."""

from __future__ import annotations

import numpy as np
import pytest

from anyskill.envs.teleop import (
    Axis,
    AxisTeleop,
    TargetTeleop,
    Teleop,
    Toggle,
    box_teleop,
    pusher_teleop,
)


def test_pusher_teleop_holds_the_last_direction_until_stopped():
    t = pusher_teleop(speed=0.5)
    assert isinstance(t, Teleop)
    np.testing.assert_array_equal(t.action(), [0.0, 0.0])
    assert t.press("d") and np.allclose(t.action(), [0.5, 0.0])
    assert t.press("up") and np.allclose(t.action(), [0.0, 0.5])  # replaces, not adds
    assert not t.press("z")  # not a key of this teleop
    assert np.allclose(t.action(), [0.0, 0.5]) and t.status() == "moving +y"
    t.stop()
    assert np.allclose(t.action(), 0.0) and t.status() == "still"


def test_a_toggle_holds_as_is_until_pressed_then_flips():
    t = AxisTeleop(
        (-1.0, -1.0, 0.0),
        (1.0, 1.0, 2.0),
        (Axis(0, ("d",), ("a",), "x"), Axis(1, ("w",), ("s",), "y")),
        (Toggle("g", 2, (0.0, 2.0), ("opening", "closing"), "gripper"),),
        speed=0.5,
        rest=(0.0, 0.0, 1.0),
    )
    np.testing.assert_allclose(t.action(), [0, 0, 1])  # gripper held as the policy left it
    assert t.status() == "still, gripper as is"
    t.press("a"), t.press("g")
    np.testing.assert_allclose(t.action(), [-0.5, 0, 2])
    t.press("g")
    np.testing.assert_allclose(t.action(), [-0.5, 0, 0])
    t.stop()  # stops moving; the gripper keeps its command
    np.testing.assert_allclose(t.action(), [0, 0, 0])
    t.reset()
    np.testing.assert_allclose(t.action(), [0, 0, 1])


def test_box_teleop_drives_six_dims_from_the_middle_of_their_range():
    t = box_teleop((-1.0,) * 7, (1.0,) * 7)
    np.testing.assert_array_equal(t.action(), np.zeros(7))
    for i, key in enumerate(["d", "w", "r", "t", "y", "u"]):
        t.press(key)
        expected = np.zeros(7)
        expected[i] = 1.0
        np.testing.assert_array_equal(t.action(), expected)
    t.press("j")
    assert t.action()[5] == -1.0
    shifted = box_teleop((0.0, 10.0), (2.0, 20.0), speed=0.5)
    np.testing.assert_allclose(shifted.action(), [1.0, 15.0])
    shifted.press("left")
    np.testing.assert_allclose(shifted.action(), [0.5, 15.0])


def test_target_teleop_moves_from_the_current_position_and_clips():
    t = TargetTeleop((0, 1), (0.0, 0.0), (512.0, 512.0), 25.0, {"d": (1.0, 0.0), "w": (0.0, -1.0)})
    state = np.array([100.0, 10.0, 3.0, 4.0, 0.5], np.float32)
    np.testing.assert_allclose(t.action(state), [100, 10])  # hold where the agent is
    t.press("d")
    np.testing.assert_allclose(t.action(state), [125, 10])
    t.press("w")
    np.testing.assert_allclose(t.action(state), [100, 0])  # clipped at the edge
    with pytest.raises(ValueError, match="reads from observation.state"):
        t.action(None)


def test_teleop_keys_are_checked():
    with pytest.raises(ValueError, match="'space' is reserved"):
        AxisTeleop((-1.0,), (1.0,), (Axis(0, ("space",), ("a",)),))
    with pytest.raises(ValueError, match="'a' is bound twice"):
        AxisTeleop((-1.0, -1.0), (1.0, 1.0), (Axis(0, ("d",), ("a",)), Axis(1, ("a",), ("s",))))
    with pytest.raises(ValueError, match="dimension 3 of a 2-dim action"):
        AxisTeleop((-1.0, -1.0), (1.0, 1.0), (), (Toggle("g", 3, (0.0, 1.0)),))
    with pytest.raises(ValueError, match="speed must be in"):
        pusher_teleop(speed=0.0)
    with pytest.raises(ValueError, match="'q' is reserved"):
        TargetTeleop((0,), (0.0,), (1.0,), 1.0, {"q": (1.0,)})
