"""The Gymnasium adapter: API conformance, episode ends, seeding, vector == single, bad input."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import gymnasium as gym
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from anyskill.envs import PointMaze, make
from anyskill.envs.adapters import evaluate
from anyskill.envs.adapters.gymnasium import (
    GOAL_KEY,
    STATE_KEY,
    GymnasiumEnv,
    GymnasiumVectorEnv,
    gymnasium_id,
    register_gymnasium_envs,
)

SHORT = 6  # episode length of the short-episode env: several episodes in a few steps


@dataclasses.dataclass(frozen=True, eq=False)
class CameraMaze(PointMaze):
    """A point maze with a (tiny, jittable) camera and a language instruction, standing in
    for image envs: the frame's grey level encodes the robot's x position."""

    image_size: int = 4
    camera_name = "top"

    def render_image(self, physics):
        level = jnp.clip((physics.pos[0] + 6.0) * 12.0, 0, 255).astype(jnp.uint8)
        return jnp.full((self.image_size, self.image_size, 3), level, jnp.uint8)

    def instruction(self, state) -> str:
        goal = np.asarray(state.goal)
        return f"go to ({goal[0]:.0f}, {goal[1]:.0f})"


@dataclasses.dataclass(frozen=True, eq=False)
class HostRenderedMaze(CameraMaze):
    """Same frames drawn with numpy on the host: ``render_image`` cannot be traced."""

    def render_image(self, physics):
        level = np.uint8(np.clip((float(np.asarray(physics.pos)[0]) + 6.0) * 12.0, 0, 255))
        return np.full((self.image_size, self.image_size, 3), level, np.uint8)


def expected_level(x: float) -> int:
    return int(np.clip((x + 6.0) * 12.0, 0, 255).astype(np.float32).astype(np.uint8))


@pytest.fixture(scope="module")
def short_env() -> GymnasiumEnv:
    return GymnasiumEnv("pointmaze-u", episode_length=SHORT)


def test_check_env_passes_without_warnings():
    (env_id,) = register_gymnasium_envs(["pointmaze-u"])
    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # With a spec, check_env also re-makes the env per render mode and checks close().
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3


def test_registration_is_idempotent_and_checks_names():
    ids = register_gymnasium_envs()
    assert gymnasium_id("pointmaze-u") in ids and ids == register_gymnasium_envs()
    with pytest.raises(ValueError, match="Did you mean 'pointmaze-u'"):
        register_gymnasium_envs(["pointmaze-uu"])


def test_seeding_is_deterministic(short_env):
    obs_a, _ = short_env.reset(seed=3)
    next_a, _ = short_env.reset()
    obs_b, _ = short_env.reset(seed=3)
    next_b, _ = short_env.reset()
    other, _ = short_env.reset(seed=4)
    for k in obs_a:
        np.testing.assert_array_equal(obs_a[k], obs_b[k])
        np.testing.assert_array_equal(next_a[k], next_b[k])
    assert not np.array_equal(obs_a[STATE_KEY], other[STATE_KEY])


def test_truncation_reports_the_final_observation_not_the_next_episode(short_env):
    env = short_env.env
    obs, info = short_env.reset(seed=0)
    goal = obs[GOAL_KEY]
    push = np.array([0.0, 1.0], np.float32)  # along the u-maze's first corridor, away from start
    max_move = env.max_speed / env.control_hz * 1.001
    for t in range(1, SHORT + 1):
        prev = obs[STATE_KEY]
        obs, reward, terminated, truncated, info = short_env.step(push)
        # Continuous motion on every step, the last included: no jump back to a start.
        assert np.linalg.norm(obs[STATE_KEY][:2] - prev[:2]) <= max_move
        np.testing.assert_array_equal(obs[GOAL_KEY], goal)
        assert truncated == (t == SHORT) and not terminated
    assert np.linalg.norm(obs[STATE_KEY][:2]) > 1.0  # far from the start cell's centre
    with pytest.raises(gym.error.ResetNeeded, match="episode has ended"):
        short_env.step(push)
    # The next episode starts at the start cell (noise <= start_noise per axis).
    start, _ = short_env.reset()
    assert np.all(np.abs(start[STATE_KEY][:2]) <= env.start_noise + 1e-6)


def test_vector_env_matches_sync_vector_of_single_envs_step_for_step():
    num_envs, steps = 3, 2 * SHORT + 2  # crosses two auto-resets
    ours = GymnasiumVectorEnv("pointmaze-u", num_envs, episode_length=SHORT)
    reference = gym.vector.SyncVectorEnv(
        [lambda: GymnasiumEnv("pointmaze-u", episode_length=SHORT)] * num_envs,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert ours.single_observation_space == reference.single_observation_space
    assert ours.action_space == reference.action_space
    obs_a, info_a = ours.reset(seed=11)
    obs_b, info_b = reference.reset(seed=11)
    compare(obs_a, obs_b)
    compare(info_a, info_b)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(steps):
        actions = rng.uniform(-1, 1, ours.action_space.shape).astype(np.float32)
        a = ours.step(actions)
        b = reference.step(actions)
        for x, y in zip(a, b, strict=True):
            compare(x, y)
        ended += int(a[3].sum())
        if a[3].any():
            # SAME_STEP: the observation is the next episode's start, the final one in info.
            i = int(np.flatnonzero(a[3])[0])
            assert not np.array_equal(a[0][STATE_KEY][i], a[4]["final_obs"][i][STATE_KEY])
    assert ended == 2 * num_envs


def compare(a, b):
    """Equal structure, dtypes and values (bit-exact: vmap does not change the arithmetic)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        for k in a:
            compare(a[k], b[k])
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape
        for x, y in zip(a, b, strict=True):
            compare(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.filterwarnings("ignore:.*not having a spec")  # check_env on an unregistered env
def test_images_and_instruction_follow_the_final_physics():
    env = GymnasiumEnv(CameraMaze(episode_length=3), render_mode="rgb_array")
    key = "observation.images.top"
    assert env.observation_space[key] == gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)
    obs, info = env.reset(seed=1)
    assert info["task"].startswith("go to") and obs[key].dtype == np.uint8
    for _ in range(3):
        obs, _, _, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
    assert truncated and info["task"].startswith("go to")
    # The frame shows the final state (x of the final observation), not the next start.
    assert obs[key][0, 0, 0] == expected_level(obs[STATE_KEY][0])
    np.testing.assert_array_equal(env.render(), obs[key])
    check_env(env)


@pytest.mark.parametrize("maze_cls", [CameraMaze, HostRenderedMaze])
def test_vector_env_images_on_auto_reset(maze_cls):
    env = GymnasiumVectorEnv(maze_cls(episode_length=2), 2)
    key = "observation.images.top"
    obs, info = env.reset(seed=0)
    assert obs[key].shape == (2, 4, 4, 3)
    assert all(t.startswith("go to") for t in info["task"])
    for _ in range(2):
        obs, _, _, truncated, info = env.step(np.zeros((2, 2), np.float32))
    assert truncated.all()
    for i in range(2):
        final = info["final_obs"][i]
        assert final[key][0, 0, 0] == expected_level(final[STATE_KEY][0])
        assert obs[key][i, 0, 0, 0] == expected_level(obs[STATE_KEY][i, 0])
        assert isinstance(info["final_info"]["task"][i], str)


def test_bad_input_gets_clear_errors(short_env):
    with pytest.raises(ValueError, match="Did you mean 'pointmaze-u'"):
        GymnasiumEnv("pointmaze-uu")
    with pytest.raises(ValueError, match="need an env name"):
        GymnasiumEnv(make("pointmaze-u"), episode_length=5)
    with pytest.raises(ValueError, match="render_mode='human'"):
        GymnasiumEnv("pointmaze-u", render_mode="human")
    fresh = GymnasiumEnv("pointmaze-u", episode_length=SHORT)
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        fresh.step(np.zeros(2, np.float32))
    short_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2,\), got \(3,\)"):
        short_env.step(np.zeros(3, np.float32))
    vec = GymnasiumVectorEnv("pointmaze-u", 2, episode_length=SHORT)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2, 2\), got \(2,\)"):
        vec.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        GymnasiumVectorEnv("pointmaze-u", 0)


def test_evaluate_on_the_gymnasium_adapter(short_env):
    seen = []

    def policy(obs):
        seen.append(sorted(obs))
        return np.zeros(2, np.float32)

    result = evaluate(policy, short_env, episodes=2, seed=0)
    assert len(result.episodes) == 2 and all(e.length == SHORT for e in result.episodes)
    assert 0.0 <= result.success_rate <= 1.0 and result.mean_length == SHORT
    assert seen[0] == [GOAL_KEY, STATE_KEY]
    with pytest.raises(ValueError, match=r"action of shape \(3,\); the env expects \(2,\)"):
        evaluate(lambda obs: np.zeros(3), short_env, episodes=1)


def test_simulators_are_imported_lazily_with_an_install_hint(monkeypatch):
    code = (
        "import sys, anyskill, anyskill.envs.adapters; "
        "print(sorted(m for m in ('gymnasium', 'ogbench', 'gym_pusht', 'gym_hil', 'mujoco') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # A missing package names the extra that installs it.
    monkeypatch.setitem(sys.modules, "gym_pusht", None)
    from anyskill.envs.adapters.lerobot_sim import make_pusht

    with pytest.raises(ImportError, match=r"pip install 'anyskill\[sim\]'"):
        make_pusht()


def test_vector_reset_mask_resets_only_the_masked_envs():
    vec = GymnasiumVectorEnv("pointmaze-u", 2, episode_length=SHORT)
    vec.reset(seed=0)
    obs, _, _, _, _ = vec.step(np.ones((2, 2), np.float32))
    mask = np.array([True, False])
    again, info = vec.reset(options={"reset_mask": mask})
    assert list(info["_is_success"]) == [True, False]
    np.testing.assert_array_equal(again[STATE_KEY][1], obs[STATE_KEY][1])
    assert np.all(np.abs(again[STATE_KEY][0, :2]) <= vec.env.start_noise + 1e-6)
    with pytest.raises(ValueError, match="reset_mask"):
        vec.reset(options={"reset_mask": np.zeros(2, bool)})


# ---- Gymnasium's registry: make / make_vec with max_episode_steps (issue 22, defect 16) ----
def test_make_vec_builds_tabletop_envs_with_the_specs_episode_length():
    # make_vec hands the spec's max_episode_steps to the vector entry point; a tabletop env
    # (whose episode length is set by its task families) used to fail with a TypeError.
    (env_id,) = register_gymnasium_envs(["tabletop-reach"])
    vec = gym.make_vec(env_id, num_envs=2)
    obs, _ = vec.reset(seed=0)
    assert obs[STATE_KEY].shape == (2, vec.unwrapped.env.obs_dim)
    assert vec.unwrapped.env.episode_length == gym.spec(env_id).max_episode_steps


def test_make_vec_max_episode_steps_shortens_a_tabletop_episode():
    (env_id,) = register_gymnasium_envs(["tabletop-reach"])
    vec = gym.make_vec(env_id, num_envs=2, max_episode_steps=3)
    vec.reset(seed=0)
    truncated = [vec.step(np.zeros((2, 2), np.float32))[3] for _ in range(3)]
    assert [t.tolist() for t in truncated] == [[False, False], [False, False], [True, True]]


@pytest.mark.parametrize("limit", [7, 60])  # shorter and longer than the env's own 50 steps
def test_gym_make_honours_max_episode_steps(limit):
    (env_id,) = register_gymnasium_envs(["pointmaze-arena"])
    assert gym.spec(env_id).max_episode_steps == 50
    env = gym.make(env_id, max_episode_steps=limit)
    env.reset(seed=0)
    ends = []
    for t in range(1, limit + 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        if terminated or truncated:
            ends.append(t)
    assert ends == [limit]


def test_gym_make_vec_honours_max_episode_steps_on_a_maze():
    (env_id,) = register_gymnasium_envs(["pointmaze-arena"])
    vec = gym.make_vec(env_id, num_envs=2, max_episode_steps=60)
    vec.reset(seed=0)
    ends = [bool(vec.step(np.zeros((2, 2), np.float32))[3].all()) for _ in range(60)]
    assert ends == [False] * 59 + [True]


def test_envs_are_registered_on_import_for_the_module_prefix():
    # Gymnasium's way to use envs of a package it does not know: "module:id" imports the
    # module, which registers its envs.
    code = (
        "import gymnasium as gym; "
        "env = gym.make('anyskill.envs.adapters.gymnasium:anyskill/pointmaze-u-v0'); "
        "vec = gym.make_vec('anyskill.envs.adapters.gymnasium:anyskill/tabletop-push-v0', 2); "
        "print(type(env.unwrapped).__name__, type(vec).__name__, env.spec.max_episode_steps)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["GymnasiumEnv", "GymnasiumVectorEnv", "100"]


def test_max_episode_steps_is_checked():
    with pytest.raises(ValueError, match="max_episode_steps must be >= 1 .* got 0"):
        GymnasiumEnv("pointmaze-u", max_episode_steps=0)
    env = GymnasiumEnv(make("pointmaze-u"), max_episode_steps=9)  # an instance too
    assert env.env.episode_length == 9
