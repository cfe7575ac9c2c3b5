"""Bring your own environment: adapters between anyskill and other simulators' APIs.

* :mod:`~anyskill.envs.adapters.gymnasium` — anyskill envs as ``gymnasium.Env`` /
  ``gymnasium.vector.VectorEnv``, registrable as ``anyskill/<name>-v0``.
* :mod:`~anyskill.envs.adapters.ogbench` — OGBench's goal-conditioned tasks under OGBench's
  own evaluation protocol (5 evaluation tasks per env).
* :mod:`~anyskill.envs.adapters.lerobot_sim` — LeRobot's simulators gym-pusht (PushT) and
  gym-hil (Panda pick-cube).
* :mod:`~anyskill.envs.adapters.evaluation` — the observation convention (LeRobot feature
  names), the host policy type and one :func:`evaluate` shared by all of them.

The simulators are optional (``pip install 'anyskill[sim]'``) and imported only when an
adapter module is: ``import anyskill.envs.adapters`` itself needs nothing but numpy.
"""

from __future__ import annotations

from anyskill.envs.adapters.evaluation import (
    EpisodeResult,
    EvalResult,
    HostObs,
    HostPolicy,
    evaluate,
    policy_observation,
)

__all__ = [
    "EpisodeResult",
    "EvalResult",
    "HostObs",
    "HostPolicy",
    "evaluate",
    "policy_observation",
]
