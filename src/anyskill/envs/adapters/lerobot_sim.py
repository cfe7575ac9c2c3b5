"""LeRobot's simulators — gym-pusht (PushT) and gym-hil (Panda pick-cube) — for host policies.

Both are wrapped into the adapters' observation convention (LeRobot feature names, see
:mod:`anyskill.envs.adapters.evaluation`) with a language instruction in ``info["task"]`` and
the env's own success flag in ``info["is_success"]``, so :func:`~anyskill.envs.adapters.evaluate`
runs on them. Actions keep each simulator's native convention (the one LeRobot's datasets
for these envs record), exposed as ``action_space``.

Rendering. PushT draws with pygame into off-screen surfaces: no display needed. gym-hil
renders with MuJoCo's OpenGL renderer; without a display this needs EGL (Debian/Ubuntu:
``apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri``; ``MUJOCO_GL=egl`` is chosen
automatically when no display is set) or OSMesa (``libosmesa6``, ``MUJOCO_GL=osmesa``). The
state-only gym-hil path needs no OpenGL at all: gym-hil builds a renderer even for state
observations, and this adapter swaps in a stand-in while it does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import numpy as np

from anyskill.envs.adapters._optional import (
    LegacyGlobalRNG,
    gl_error,
    prefer_headless_mujoco_gl,
    require,
)

_PURPOSE = "anyskill.envs.adapters.lerobot_sim"
gym = require("gymnasium", purpose=_PURPOSE)

STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
IMAGE_KEY_PREFIX = "observation.images."

PUSHT_ID = "gym_pusht/PushT-v0"
PUSHT_INSTRUCTION = "Push the T-shaped block onto the target"
PUSHT_OBS_TYPES = ("state", "environment_state_agent_pos", "pixels_agent_pos")
PANDA_PICK_CUBE_ID = "gym_hil/PandaPickCubeBase-v0"
PANDA_PICK_CUBE_INSTRUCTION = "Pick up the cube"
#: gym-hil's end-effector step (metres per unit action) in its ``PandaPickCube-v0`` setup
GYM_HIL_EE_STEP = 0.025


def _box32(space: Any) -> Any:
    """``space`` (a Box) as float32, bounds cast first so Gymnasium does not warn."""
    low = np.asarray(space.low, np.float32)
    high = np.asarray(space.high, np.float32)
    return gym.spaces.Box(low, high, space.shape, np.float32)


class LeRobotSimEnv(gym.Wrapper):
    """A Gymnasium env whose observations are renamed to LeRobot features.

    Args:
      env: the simulator's Gymnasium env.
      observation_space: the renamed observation space.
      convert: maps one raw observation to the renamed dict.
      instruction: the task's language instruction (``info["task"]``).
      success_key: the simulator's ``info`` key of its success flag.
      global_rng: set for simulators that draw from numpy's global RNG (reset/step then run
        with a private, seedable stream; see :class:`~._optional.LegacyGlobalRNG`).
    """

    def __init__(
        self,
        env: Any,
        observation_space: Any,
        convert: Callable[[Any], dict[str, np.ndarray]],
        instruction: str,
        success_key: str,
        global_rng: LegacyGlobalRNG | None = None,
    ):
        super().__init__(env)
        self.observation_space = observation_space
        self.instruction = instruction
        self._convert = convert
        self._success_key = success_key
        self._global_rng = global_rng

    def _scope(self) -> contextlib.AbstractContextManager:
        return self._global_rng.active() if self._global_rng else contextlib.nullcontext()

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        return dict(
            info, is_success=bool(info.get(self._success_key, False)), task=self.instruction
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None and self._global_rng is not None:
            self._global_rng.reseed(seed)
        with self._scope():
            obs, info = self.env.reset(seed=seed, options=options)
        return self._convert(obs), self._info(info)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action must have shape {self.action_space.shape} for "
                f"{self.spec.id if self.spec else type(self.env.unwrapped).__name__}, got {action.shape}"
            )
        with self._scope():
            obs, reward, terminated, truncated, info = self.env.step(action)
        return (
            self._convert(obs),
            float(reward),
            bool(terminated),
            bool(truncated),
            self._info(info),
        )


def _agent_and_environment_state(raw: gym.spaces.Dict):
    """Space and converter for ``{agent_pos, environment_state}`` observations (PushT's
    keypoint mode and gym-hil's state mode share this layout)."""
    space = gym.spaces.Dict(
        {STATE_KEY: _box32(raw["agent_pos"]), ENV_STATE_KEY: _box32(raw["environment_state"])}
    )

    def convert(obs):
        return {
            STATE_KEY: np.asarray(obs["agent_pos"], np.float32),
            ENV_STATE_KEY: np.asarray(obs["environment_state"], np.float32),
        }

    return space, convert


# ---- gym-pusht --------------------------------------------------------------------------
def make_pusht(obs_type: str = "state", image_size: int = 96, **kwargs: Any) -> LeRobotSimEnv:
    """gym-pusht's ``PushT-v0`` (300-step limit) in the adapters' convention.

    Args:
      obs_type: ``"state"`` -> ``observation.state`` = ``[agent_x, agent_y, block_x, block_y,
        block_angle]``; ``"environment_state_agent_pos"`` -> ``observation.state`` = agent
        position, ``observation.environment_state`` = the block's 16 keypoint coordinates;
        ``"pixels_agent_pos"`` -> ``observation.state`` = agent position and
        ``observation.images.top`` = a top-down ``image_size`` x ``image_size`` RGB image.
      image_size: side of the image observation in pixels.
      **kwargs: more PushT settings (e.g. ``block_cog``, ``damping``).

    Actions are PushT's: the target position of the agent in pixels, ``Box(0, 512, (2,))``.
    Success is PushT's ``is_success`` (coverage of the target > 95 %; the episode ends).
    """
    if obs_type not in PUSHT_OBS_TYPES:
        raise ValueError(f"obs_type must be one of {PUSHT_OBS_TYPES}, got {obs_type!r}")
    require("gym_pusht", package="gym-pusht", purpose=f"{_PURPOSE} (PushT)")
    env = gym.make(
        PUSHT_ID,
        obs_type=obs_type,
        render_mode="rgb_array",
        observation_width=image_size,
        observation_height=image_size,
        **kwargs,
    )
    raw = env.observation_space
    if obs_type == "state":
        space = gym.spaces.Dict({STATE_KEY: _box32(raw)})

        def convert(obs):
            return {STATE_KEY: np.asarray(obs, np.float32)}

    elif obs_type == "environment_state_agent_pos":
        space, convert = _agent_and_environment_state(raw)

    else:
        image_key = IMAGE_KEY_PREFIX + "top"
        space = gym.spaces.Dict({STATE_KEY: _box32(raw["agent_pos"]), image_key: raw["pixels"]})

        def convert(obs):
            return {
                STATE_KEY: np.asarray(obs["agent_pos"], np.float32),
                image_key: np.asarray(obs["pixels"], np.uint8),
            }

    return LeRobotSimEnv(env, space, convert, PUSHT_INSTRUCTION, success_key="is_success")


# ---- gym-hil ----------------------------------------------------------------------------
class _NoRenderer:
    """Stands in for ``mujoco.Renderer`` while gym-hil builds a state-only env.

    gym-hil's ``FrankaGymEnv.__init__`` creates an OpenGL renderer and renders one frame even
    when ``image_obs=False``; on a machine without a display or GL library that fails, though
    state observations never need it.
    """

    def __init__(self, model: Any = None, height: int = 1, width: int = 1, **_: Any):
        self._shape = (height, width, 3)

    def update_scene(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "this gym-hil env was built for state observations and has no renderer; "
            "use make_gym_hil(image_obs=True) to render (needs EGL or OSMesa)"
        )

    def render(self) -> np.ndarray:
        return np.zeros(self._shape, np.uint8)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _without_gl(hil_base_module: Any) -> Iterator[None]:
    mujoco = hil_base_module.mujoco

    class MujocoWithoutRenderer:
        Renderer = _NoRenderer

        def __getattr__(self, name: str) -> Any:
            return getattr(mujoco, name)

    # Only gym-hil's base module sees the stand-in, and only while the env is built.
    with mock.patch.object(hil_base_module, "mujoco", MujocoWithoutRenderer()):
        yield


def make_gym_hil(
    image_obs: bool = False,
    image_size: int = 128,
    ee_step: float | None = GYM_HIL_EE_STEP,
    random_block_position: bool = False,
    **kwargs: Any,
) -> LeRobotSimEnv:
    """gym-hil's Panda pick-cube task (``PandaPickCubeBase-v0``, 100-step limit).

    Args:
      image_obs: add ``observation.images.front`` and ``observation.images.wrist``
        (``image_size`` square, uint8; needs OpenGL, see the module docstring). Software
        rendering is slow here (~0.5 s per 128x128 frame with llvmpipe on 2 CPU cores, most of
        it MuJoCo's 4096^2 shadow map).
      ee_step: ``None`` keeps the base env's 7-D action ``[dx, dy, dz, rx, ry, rz, grasp]``
        (position deltas in metres); a float applies gym-hil's own ``EEActionWrapper`` as in
        its ``PandaPickCube-v0`` (and LeRobot's gym-hil setup): 4-D actions, ``[-1, 1]^3``
        end-effector steps of ``ee_step`` metres and a gripper command in ``[0, 2]``.
      random_block_position: draw the cube's start (gym-hil draws it from numpy's global RNG;
        here from a private stream seeded by ``reset(seed=...)``).
      **kwargs: more settings of ``PandaPickCubeGymEnv`` (``reward_type``, ``control_dt``, ...).

    Observations: ``observation.state`` = the robot state gym-hil calls ``agent_pos`` (joint
    positions and velocities, gripper command, gripper position; 18 values) and, for state
    observations, ``observation.environment_state`` = the cube position. Success is gym-hil's
    ``succeed`` flag (cube lifted by 10 cm; the episode ends).
    """
    prefer_headless_mujoco_gl()
    gym_hil = require("gym_hil", package="gym-hil", purpose=f"{_PURPOSE} (gym-hil)")
    from gym_hil import mujoco_gym_env
    from gym_hil.wrappers.hil_wrappers import EEActionWrapper

    spec = mujoco_gym_env.GymRenderingSpec(height=image_size, width=image_size)
    build = contextlib.nullcontext() if image_obs else _without_gl(mujoco_gym_env)
    global_rng = LegacyGlobalRNG()
    try:
        with build, global_rng.active():
            env = gym.make(
                PANDA_PICK_CUBE_ID,
                image_obs=image_obs,
                render_spec=spec,
                random_block_position=random_block_position,
                **kwargs,
            )
    except (mujoco_gym_env.mujoco.FatalError, AttributeError, OSError) as e:
        if not image_obs:
            raise
        raise gl_error("gym-hil with image_obs=True", e) from e
    if ee_step is not None:
        step = {"x": ee_step, "y": ee_step, "z": ee_step}
        env = EEActionWrapper(env, ee_action_step_size=step, use_gripper=True)
    del gym_hil  # imported for its registrations and the clear error when missing

    raw = env.observation_space
    if image_obs:
        front, wrist = IMAGE_KEY_PREFIX + "front", IMAGE_KEY_PREFIX + "wrist"
        space = gym.spaces.Dict(
            {
                STATE_KEY: _box32(raw["agent_pos"]),
                front: raw["pixels"]["front"],
                wrist: raw["pixels"]["wrist"],
            }
        )

        def convert(obs):
            return {
                STATE_KEY: np.asarray(obs["agent_pos"], np.float32),
                front: np.asarray(obs["pixels"]["front"], np.uint8),
                wrist: np.asarray(obs["pixels"]["wrist"], np.uint8),
            }

    else:
        space, convert = _agent_and_environment_state(raw)

    return LeRobotSimEnv(
        env,
        space,
        convert,
        PANDA_PICK_CUBE_INSTRUCTION,
        success_key="succeed",
        global_rng=global_rng,
    )


__all__ = [
    "LeRobotSimEnv",
    "make_pusht",
    "make_gym_hil",
    "PUSHT_INSTRUCTION",
    "PANDA_PICK_CUBE_INSTRUCTION",
]
