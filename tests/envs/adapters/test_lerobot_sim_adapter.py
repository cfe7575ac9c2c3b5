"""gym-pusht and gym-hil adapters: observation keys and shapes, instruction, evaluate, errors."""

from __future__ import annotations

import numpy as np
import pytest

from anyskill.envs.adapters import evaluate
from anyskill.envs.adapters.lerobot_sim import (
    PANDA_PICK_CUBE_INSTRUCTION,
    PUSHT_INSTRUCTION,
    make_gym_hil,
    make_pusht,
)

# OGBench's and gym-hil's own spaces cast float64 bounds to float32 Boxes (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")

STATE, ENV_STATE = "observation.state", "observation.environment_state"


def assert_obs(obs, space, expected):
    """``obs`` has exactly the ``expected`` {key: (shape, dtype)} and lies in ``space``."""
    assert {k: (v.shape, v.dtype) for k, v in obs.items()} == expected
    assert obs in space


def random_policy(env, seed=0):
    env.action_space.seed(seed)
    return lambda obs: env.action_space.sample()


@pytest.mark.parametrize(
    ("obs_type", "expected"),
    [
        ("state", {STATE: ((5,), np.float32)}),
        (
            "environment_state_agent_pos",
            {STATE: ((2,), np.float32), ENV_STATE: ((16,), np.float32)},
        ),
        (
            "pixels_agent_pos",
            {STATE: ((2,), np.float32), "observation.images.top": ((64, 64, 3), np.uint8)},
        ),
    ],
)
def test_pusht_steps_with_random_actions(obs_type, expected):
    env = make_pusht(obs_type, image_size=64)
    obs, info = env.reset(seed=0)
    assert_obs(obs, env.observation_space, expected)
    assert info["task"] == PUSHT_INSTRUCTION and info["is_success"] is False
    env.action_space.seed(0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert_obs(obs, env.observation_space, expected)
        assert isinstance(info["is_success"], bool) and info["task"] == PUSHT_INSTRUCTION
    seen = []

    def policy(obs):
        seen.append(obs["task"])
        return env.action_space.sample()

    result = evaluate(policy, env, episodes=1, seed=0, max_steps=5)
    assert result.episodes[0].length == 5 and seen == [PUSHT_INSTRUCTION] * 5


def test_pusht_seeding_and_bad_input():
    env = make_pusht("state")
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a[STATE], b[STATE])
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="obs_type must be one of"):
        make_pusht("pixels_only")


def test_gym_hil_state_only_steps_without_opengl():
    env = make_gym_hil(random_block_position=True)
    expected = {STATE: ((18,), np.float32), ENV_STATE: ((3,), np.float32)}
    obs, info = env.reset(seed=1)
    assert_obs(obs, env.observation_space, expected)
    assert info["task"] == PANDA_PICK_CUBE_INSTRUCTION
    # gym-hil draws the cube position from numpy's global RNG; the adapter seeds a private one.
    again, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs[ENV_STATE], again[ENV_STATE])
    assert env.action_space.shape == (4,)  # gym-hil's end-effector actions: xyz + gripper
    result = evaluate(random_policy(env), env, episodes=1, seed=0, max_steps=5)
    assert result.episodes[0].length == 5 and not result.episodes[0].success
    with pytest.raises(RuntimeError, match="no renderer"):
        env.unwrapped.render()
    with pytest.raises(ValueError, match=r"action must have shape \(4,\)"):
        env.step(np.zeros(7))


def test_gym_hil_images():
    try:
        env = make_gym_hil(image_obs=True, image_size=32)
    except RuntimeError as e:  # a missing system OpenGL library, not a missing pip package
        pytest.skip(f"no off-screen OpenGL on this machine: {e}")
    expected = {
        STATE: ((18,), np.float32),
        "observation.images.front": ((32, 32, 3), np.uint8),
        "observation.images.wrist": ((32, 32, 3), np.uint8),
    }
    obs, _ = env.reset(seed=0)
    assert_obs(obs, env.observation_space, expected)
    obs, *_ = env.step(env.action_space.sample())
    assert_obs(obs, env.observation_space, expected)
    assert obs["observation.images.front"].max() > 0  # something was drawn
    env.close()
