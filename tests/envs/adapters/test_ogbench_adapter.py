"""The OGBench adapter: OGBench's 5-task protocol, its success flag, seeding, bad input.

Builds the envs only (``env_only``): no dataset is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from anyskill.envs.adapters.ogbench import OGBenchEnv, evaluate_ogbench

# OGBench's and gym-hil's own spaces cast float64 bounds to float32 Boxes (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")

POINTMAZE = "pointmaze-medium-navigate-v0"
GOAL, STATE = "observation.goal", "observation.state"


@pytest.fixture(scope="module")
def pointmaze() -> OGBenchEnv:
    return OGBenchEnv(POINTMAZE)


def zero_policy(obs):
    return np.zeros(2, np.float32)


def toward_goal(obs):
    """Handed the true goal direction: reaches goals in line of sight (task 1), no planning."""
    return 2.0 * (obs[GOAL] - obs[STATE])


def test_protocol_reports_the_five_evaluation_tasks(pointmaze):
    result = evaluate_ogbench(zero_policy, pointmaze, episodes_per_task=1, max_steps=20)
    assert list(result.tasks) == ["task1", "task2", "task3", "task4", "task5"]
    metrics = result.metrics()
    assert set(metrics) == {f"evaluation/task{i}_success" for i in range(1, 6)} | {
        "evaluation/overall_success"
    }
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert all(r.episodes[0].length == 20 for r in result.tasks.values())


def test_success_is_ogbench_flag_and_beats_zero_policy(pointmaze):
    towards = evaluate_ogbench(toward_goal, pointmaze, episodes_per_task=2, task_ids=[1])
    zero = evaluate_ogbench(zero_policy, pointmaze, episodes_per_task=1, task_ids=[1])
    assert towards.overall_success == 1.0 and zero.overall_success == 0.0
    # OGBench terminates on success: episodes end long before its 1000-step limit.
    assert all(e.length < 1000 for e in towards.tasks["task1"].episodes)
    assert zero.tasks["task1"].episodes[0].length == 1000
    obs, info = pointmaze.reset(seed=0, options={"task_id": 1})
    for _ in range(5):
        obs, _, _, _, info = pointmaze.step(toward_goal(obs))
        assert info["is_success"] == bool(info["success"])


def test_seeded_reset_is_reproducible_and_leaves_global_rng_alone(pointmaze):
    before = np.random.get_state()[1].copy()
    a, info = pointmaze.reset(seed=7, options={"task_id": 2})
    b, _ = pointmaze.reset(seed=7, options={"task_id": 2})
    c, _ = pointmaze.reset(seed=8, options={"task_id": 2})
    for k in (STATE, GOAL):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a[STATE], c[STATE])
    assert info["task_id"] == 2 and info["is_success"] is False
    np.testing.assert_array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize(
    ("name", "obs_dim", "action_dim"),
    [("antmaze-medium-navigate-v0", 29, 8), ("cube-single-play-v0", 28, 5)],
)
def test_other_envs_step_with_random_actions(name, obs_dim, action_dim):
    env = OGBenchEnv(name)
    assert env.num_tasks == 5
    obs, info = env.reset(seed=0, options={"task_id": 3})
    assert obs[STATE].shape == obs[GOAL].shape == (obs_dim,)
    env.action_space.seed(0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs[STATE].dtype == np.float32 and obs in env.observation_space
        assert isinstance(info["is_success"], bool)
    assert env.action_space.shape == (action_dim,)


def test_bad_input_gets_clear_errors(pointmaze):
    with pytest.raises(ValueError, match="Did you mean 'pointmaze-medium-v0'"):
        OGBenchEnv("pointmaze-medum-navigate-v0")
    with pytest.raises(ValueError, match="single-task"):
        OGBenchEnv("pointmaze-medium-navigate-singletask-task1-v0")
    with pytest.raises(ValueError, match=r"task_id must be an int in \[1, 5\]"):
        pointmaze.reset(options={"task_id": 6})
    with pytest.raises(ValueError, match=r"task_ids must be in \[1, 5\]"):
        evaluate_ogbench(zero_policy, pointmaze, episodes_per_task=1, task_ids=[0])
    pointmaze.reset(seed=0, options={"task_id": 1})
    with pytest.raises(ValueError, match=r"action must have shape \(2,\)"):
        pointmaze.step(np.zeros(3))
