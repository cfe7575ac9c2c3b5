"""One rollout: the only loop that steps envs with a policy.

``rollout(env, policy, key, num_envs=..., replan_every=..., corrector=None, ...) ->
Episodes`` serves evaluation (:mod:`anyskill.algos.vla.evaluate`), deployment with a
corrector (:mod:`anyskill.flywheel.deploy`), a person correcting at the keyboard
(:mod:`anyskill.flywheel.human`), recording scripted demonstrations
(:mod:`anyskill.data.record`), rendering (:mod:`anyskill.envs.video`), the simulated robot
(:mod:`anyskill.serve.robot`) and the host adapters' evaluation
(:mod:`anyskill.envs.adapters.evaluation`).

* :mod:`~anyskill.rollout.envs` — the env side: pure-JAX envs and host (Gymnasium) adapter
  envs behind one :class:`BatchEnv`, offering named observation fields.
* :mod:`~anyskill.rollout.correctors` — who takes over a failing policy, and when.
* :mod:`~anyskill.rollout.policies` — scripted controllers of the privileged env state.
* :mod:`~anyskill.rollout.core` — the loop and its key schedule.
"""

from anyskill.rollout.core import EpisodeKeys, rollout
from anyskill.rollout.correctors import (
    Boundary,
    Corrector,
    Person,
    PersonDecides,
    StallTrigger,
    StepStatus,
    Trigger,
    ValueTrigger,
    goal_distance,
)
from anyskill.rollout.envs import (
    ENV_STATE,
    ENV_STATE_SPEC,
    BatchEnv,
    HostBatchEnv,
    JaxBatchEnv,
    as_batch_env,
    check_inputs,
)
from anyskill.rollout.episodes import Episodes, concat
from anyskill.rollout.policies import StatePolicy, expert_policy, random_policy, zero_policy

__all__ = [
    "rollout",
    "EpisodeKeys",
    "Episodes",
    "concat",
    "BatchEnv",
    "JaxBatchEnv",
    "HostBatchEnv",
    "as_batch_env",
    "check_inputs",
    "ENV_STATE",
    "ENV_STATE_SPEC",
    "Corrector",
    "Trigger",
    "Boundary",
    "StallTrigger",
    "ValueTrigger",
    "PersonDecides",
    "Person",
    "StepStatus",
    "goal_distance",
    "StatePolicy",
    "expert_policy",
    "random_policy",
    "zero_policy",
]
