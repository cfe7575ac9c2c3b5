"""Deploy a chunking policy in the tabletop simulator, with a corrector on call, and record.

Every env runs one episode. The policy samples an action chunk every ``replan_every`` steps;
a *corrector* (the scripted expert — the same interface a person with a gamepad would drive)
takes control of an env when its *trigger* fires and hands back after ``correction_steps``
steps. Triggers: ``stall`` (the task's goal distance has not shrunk over the last
``stall_window`` steps) or ``value`` (the value function predicts a value below
``value_threshold``, i.e. a failure coming). Only a ``corrector_fraction`` of the envs have a
corrector watching (attention is the scarce resource), and each may intervene any number of
times. Frames under correction are recorded with ``intervention=True``.

The loop is :func:`anyskill.rollout.rollout`; this module maps the flywheel's
:class:`CorrectorConfig` to a :class:`~anyskill.rollout.Corrector` (:func:`make_corrector`)
and runs a deployment (:func:`deploy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from anyskill.envs.tabletop.env import Tabletop
from anyskill.envs.tabletop.expert import ScriptedExpert
from anyskill.policies.base import Batch
from anyskill.rollout import (
    Corrector,
    Episodes,
    JaxBatchEnv,
    PersonDecides,
    StallTrigger,
    ValueTrigger,
    goal_distance,
    rollout,
)

__all__ = [
    "CorrectorConfig",
    "Episodes",
    "deploy",
    "goal_distance",
    "make_corrector",
]


@dataclasses.dataclass(frozen=True)
class CorrectorConfig:
    """Who takes over a failing policy, and when."""

    kind: str = "expert"
    """expert: the scripted expert corrects; human: a person at the keyboard corrects the
    watched episodes, shown live in the terminal (see anyskill.flywheel.human); none: no
    interventions."""
    fraction: float = 0.5
    """Fraction of deployed envs with a corrector watching."""
    trigger: str = "stall"
    """stall: no progress towards the goal over stall_window steps; value: the value function
    predicts below value_threshold (falls back to stall until a value function exists);
    human: only the person decides (kind human; SPACE takes and hands back control)."""
    stall_window: int = 20
    """Steps over which the goal distance must shrink by stall_eps."""
    stall_eps: float = 0.02
    """Progress (in table units) that counts as not stalled."""
    value_threshold: float = -0.85
    """value trigger: intervene when V(s) falls below this (values are in [-1, 0])."""
    correction_steps: int = 15
    """Steps the corrector keeps control before handing back."""
    noise: float = 0.05
    """Action noise of the scripted corrector."""
    human_hz: float = 10.0
    """kind human: control steps shown per second of wall time (the env's rate is 10 Hz)."""

    def __post_init__(self):
        if self.kind not in ("expert", "human", "none"):
            raise ValueError(
                f"corrector kind must be 'expert', 'human' or 'none', got {self.kind!r}"
            )
        if self.trigger not in ("stall", "value", "human"):
            raise ValueError(
                f"corrector trigger must be 'stall', 'value' or 'human', got {self.trigger!r}"
            )
        if self.trigger == "human" and self.kind != "human":
            raise ValueError(
                "corrector trigger 'human' (a person decides) needs --corrector.kind human"
            )
        if self.human_hz < 0:
            raise ValueError(f"corrector human_hz must be >= 0, got {self.human_hz}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"corrector fraction must be in [0, 1], got {self.fraction}")
        if not self.noise >= 0:
            raise ValueError(f"corrector noise must be >= 0, got {self.noise}")
        for name in ("stall_window", "correction_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"corrector {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"corrector fraction must be in [0, 1], got {self.fraction}")


def make_corrector(
    cfg: CorrectorConfig,
    env: Tabletop,
    value: Callable[[Batch], np.ndarray] | None = None,
    person: Any = None,
    expert: Any = None,
) -> Corrector:
    """The :class:`~anyskill.rollout.Corrector` a :class:`CorrectorConfig` describes.

    ``value(obs) -> [B]`` enables the ``value`` trigger (without it, the stall trigger stands
    in, as before a value function exists); ``person`` is the actor of ``kind="human"``;
    ``expert`` the actor of ``kind="expert"`` (default: the tabletop's ScriptedExpert of
    ``env``; an adapter env's expert is a Policy of its observations).
    ``kind="none"`` is a corrector that watches no env: the deployment draws its keys as
    every deployment does, so its episodes are those a watched deployment would start."""
    stall = StallTrigger(cfg.stall_window, cfg.stall_eps)
    if cfg.trigger == "human":
        trigger = PersonDecides()
    elif cfg.trigger == "value" and value is not None:
        trigger = ValueTrigger(value, cfg.value_threshold)
    else:
        trigger = stall
    if cfg.kind == "human":
        if person is None:
            raise ValueError("corrector kind 'human' needs a person (a HumanCorrector)")
        actor = person
    elif expert is not None:
        actor = expert
    else:
        actor = ScriptedExpert(env, noise=cfg.noise)
    fraction = 0.0 if cfg.kind == "none" else cfg.fraction
    return Corrector(trigger, actor, fraction, cfg.correction_steps)


def deploy(
    env: Any,
    policy: Any,
    key: jax.Array,
    *,
    num_envs: int,
    replan_every: int | None = None,
    corrector: CorrectorConfig = CorrectorConfig(kind="none"),
    value: Callable[[Batch], np.ndarray] | None = None,
    record_images: int = 0,
    person: Any = None,
    expert: Any = None,
    skip: int = 0,
    on_episode: Callable[[Episodes], None] | None = None,
    teleop: Any = None,
) -> Episodes | None:
    """Deploy ``policy`` on ``num_envs`` episodes with the corrector ``corrector`` on call.

    ``value(obs) -> [B]`` enables the ``value`` trigger; ``record_images``: also keep
    ``record_images``-pixel frames of every step (for videos). With ``corrector.kind ==
    "human"`` the episodes run one at a time with a person correcting (``person``: a
    :class:`~anyskill.flywheel.human.HumanCorrector`; None: the terminal's keyboard, driving
    the env through ``teleop``, default the tabletop's pusher);
    ``expert``: the corrector of ``kind="expert"`` (see :func:`make_corrector`); ``skip``
    episodes already stored are not run again and ``on_episode`` receives each
    episode as it ends."""
    base = env.env if isinstance(env, JaxBatchEnv) else env

    def run(actor: Any) -> Episodes | None:
        return rollout(
            env,
            policy,
            key,
            num_envs=num_envs,
            replan_every=replan_every,
            corrector=make_corrector(corrector, base, value, actor, expert),
            record_images=record_images,
            on_episode=on_episode,
            skip=skip,
        )

    if corrector.kind != "human" or person is not None:
        return run(person)
    import sys

    from anyskill.flywheel.human import HumanCorrector, TerminalKeys

    with TerminalKeys() as keys:
        view = max(48, record_images)
        person = HumanCorrector(
            keys, out=sys.stdout, hz=corrector.human_hz, view_size=view, teleop=teleop
        )
        return run(person)
