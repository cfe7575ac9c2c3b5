"""The tabletop env through the Gymnasium adapter: API conformance with camera images, and
the language instruction in ``info["task"]``."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
from gymnasium.utils.env_checker import check_env  # noqa: E402

from anyskill.envs.adapters.gymnasium import GOAL_KEY, STATE_KEY, GymnasiumEnv  # noqa: E402
from anyskill.envs.tabletop import tasks as T  # noqa: E402

IMAGE_KEY = "observation.images.front"
#: the checker's warnings about a Box with infinite bounds: the tabletop declares no
#: ``obs_bounds``, so the adapter leaves the state space unbounded (see _state_bounds)
UNBOUNDED = re.compile(r"(minimum|maximum) value is -?infinity|not having a spec")


def push_instruction_pattern() -> re.Pattern:
    """Any train-split push instruction (phrasings 0-3; the held-out one never appears)."""
    names = "|".join(T.COLOURS)
    shapes = "|".join(T.SHAPES)
    fill = {"colour": f"({names})", "shape": f"({shapes})", "zone": f"({names})"}
    alternatives = []
    for template in T.TEMPLATES["push"][: T.HELDOUT_PHRASING]:
        regex = re.escape(template)
        for field, group in fill.items():
            regex = regex.replace(re.escape("{" + field + "}"), group)
        alternatives.append(f"(?:{regex})")
    return re.compile("|".join(alternatives))


@pytest.fixture(scope="module")
def env():
    return GymnasiumEnv("tabletop-push", render_mode="rgb_array")


def test_check_env_passes_with_images(env):
    """Gymnasium's checker accepts the env: spaces, seeding determinism, step/reset
    signatures, rgb_array rendering; the only tolerated warnings are about the unbounded
    state space (positions and velocities have no declared bounds) and the missing spec of
    an env built without ``gymnasium.make``."""
    assert env.observation_space[IMAGE_KEY] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    messages = [str(w.message) for w in caught]
    print("\n".join(messages))
    assert [m for m in messages if not UNBOUNDED.search(m)] == []


def test_info_task_is_the_instruction(env):
    """``info["task"]`` is the episode's instruction (a train-split push phrasing), on reset
    and on every step; the image shows the state (uint8 frames of the right size)."""
    pattern = push_instruction_pattern()
    seen = set()
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        assert pattern.fullmatch(info["task"]), info["task"]
        assert info["task"] == env.env.instruction(env._state)
        seen.add(info["task"])
        assert obs[IMAGE_KEY].shape == (64, 64, 3) and obs[IMAGE_KEY].dtype == np.uint8
        assert obs[STATE_KEY].shape == (env.env.obs_dim,)
        assert obs[GOAL_KEY].shape == (env.env.goal_dim,)
        obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], np.float32))
        assert pattern.fullmatch(info["task"])
        np.testing.assert_array_equal(env.render(), obs[IMAGE_KEY])
    assert len(seen) > 1  # seeds draw different tasks
