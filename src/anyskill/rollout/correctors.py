"""Who takes over a failing policy, and when: a corrector is a *trigger* and an *actor*.

* A :class:`Trigger` decides at each chunk boundary (every ``replan_every`` steps) which
  watched envs the actor takes over, for ``correction_steps`` steps: :class:`StallTrigger` (no
  progress towards the goal), :class:`ValueTrigger` (the value function predicts a failure),
  :class:`PersonDecides` (never fires: a person takes control whenever they like).
* An actor gives the corrective actions. Two kinds, because they run in different places:

  - a **JAX actor**, ``actor(state, key) -> action`` for one env, a pure function of the
    simulator's :class:`~anyskill.envs.base.State` (e.g.
    :class:`~anyskill.envs.tabletop.ScriptedExpert`): it runs *inside* the jitted scan that
    executes a chunk, on the steps where an env is being corrected. It must be hashable
    (it is a static argument of that jit; frozen dataclasses are).
  - a :class:`Person` (e.g. :class:`anyskill.flywheel.human.HumanCorrector`): asked from
    Python at every step of a watched episode; it can take control at any step, not only at
    chunk boundaries, and sees the episode live. Rollouts with a person run one env at a time.

Frames whose action came from the actor are recorded with ``intervention=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.policies.base import Batch, Policy

#: ``actor(state, key) -> action`` for one env (vmapped and jitted by the rollout)
JaxActor = Callable[[Any, jax.Array], jax.Array]


def goal_distance(env: Any, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """``[B]`` summed distance of the goal-space features to the goal, per 2-D entity
    (pusher + objects for the tabletop: an object already in place adds nothing); envs whose
    goal is not made of 2-D positions get the plain Euclidean distance."""
    diff = env.achieved_goal(obs) - goal
    if diff.shape[-1] % 2:
        return jnp.sqrt((diff**2).sum(-1))
    diff = diff.reshape(obs.shape[0], -1, 2)
    return jnp.sqrt((diff**2).sum(-1)).sum(-1)


@dataclasses.dataclass(frozen=True)
class Boundary:
    """What a trigger sees at a chunk boundary (``B`` envs of the current wave)."""

    obs: Batch
    """The observations the policy is about to act on."""
    distances: list[np.ndarray]
    """Goal distance (:func:`goal_distance`, ``[B]``) at every chunk boundary so far, the
    current one last (empty for envs without a goal)."""
    replan_every: int
    """Steps between boundaries."""


@runtime_checkable
class Trigger(Protocol):
    """Decides at a chunk boundary which envs the actor takes over."""

    def fire(self, at: Boundary) -> np.ndarray:
        """``[B]`` bool: take over these envs now (the rollout masks it with the envs that
        are watched, still running and not already being corrected)."""
        ...


@dataclasses.dataclass(frozen=True)
class StallTrigger:
    """Fires when the goal distance has not shrunk by ``eps`` over the last ``window`` steps
    (measured at chunk boundaries: ``window // replan_every`` of them)."""

    window: int = 20
    """Steps over which the goal distance must shrink by ``eps``."""
    eps: float = 0.02
    """Progress (in goal-space units) that counts as not stalled."""

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"stall window must be >= 1 step, got {self.window}")

    def fire(self, at: Boundary) -> np.ndarray:
        dists = at.distances
        n = max(1, self.window // at.replan_every)
        if len(dists) <= n:
            return np.zeros(np.shape(dists[-1]) if dists else (0,), bool)
        return np.asarray(dists[-1] > dists[-1 - n] - self.eps)


@dataclasses.dataclass(frozen=True)
class ValueTrigger:
    """Fires when the value function predicts a value below ``threshold`` (a failure coming)."""

    value: Callable[[Batch], np.ndarray]
    """``value(obs) -> [B]`` predicted values of the observations (a fitted ``V(s)``)."""
    threshold: float
    """Intervene below this value."""

    def fire(self, at: Boundary) -> np.ndarray:
        return np.asarray(self.value(at.obs)) < self.threshold


@dataclasses.dataclass(frozen=True)
class PersonDecides:
    """Never fires: a :class:`Person` takes and hands back control when they choose."""

    def fire(self, at: Boundary) -> np.ndarray:
        return np.zeros(len(at.distances[-1]) if at.distances else 0, bool)


@dataclasses.dataclass(frozen=True)
class StepStatus:
    """What a person is shown with each frame of a watched episode."""

    episode: int
    """Index of the episode in the rollout (0-based)."""
    num_episodes: int
    step: int
    horizon: int | None
    instruction: str
    correcting: bool
    """The person has control on this step."""
    goal_distance: float | None = None
    """How far the episode is from its goal (the env's measure), when the env has one."""


@runtime_checkable
class Person(Protocol):
    """A person correcting from Python, step by step (one episode at a time)."""

    watching: bool
    """False once the person stopped watching: the rest of the rollout runs uncorrected."""
    holding: bool
    """The person has taken control (and keeps it until they hand it back)."""
    handed_back: bool
    """Set by :meth:`read` when the person handed control back; the rollout clears it."""

    def begin_episode(self) -> None:
        """A watched episode starts."""
        ...

    def take_over(self) -> None:
        """The trigger handed the person control."""
        ...

    def read(self) -> None:
        """Take in the person's input since the last step."""
        ...

    def action(self, obs: Batch | None = None) -> np.ndarray:
        """The person's action for this step; ``obs``: the env's current observation state
        (``{"observation/state": [1, S]}``, or None when the env offers none), for actions
        that are targets relative to where the robot is."""
        ...

    def present(self, frame: np.ndarray | None, status: StepStatus) -> None:
        """Show the current frame (at :attr:`view_size` pixels; None when the env has no
        view: the person watches the robot itself and reads the status) and hold it as long
        as a person needs to react."""
        ...

    @property
    def view_size(self) -> int:
        """Side of the square frames shown to the person."""
        ...


@dataclasses.dataclass(frozen=True)
class Corrector:
    """A trigger and an actor; ``fraction`` of the envs have the corrector watching."""

    trigger: Trigger
    actor: Any
    """A JAX actor ``(state, key) -> action`` (runs inside the jitted chunk execution), a
    :class:`Person`, or — for host envs, which have no simulator state for a JAX actor — a
    :class:`~anyskill.policies.base.Policy` of the env's observations asked for one action
    on each step it corrects (e.g. gym-pusht's scripted expert)."""
    fraction: float = 1.0
    """Fraction of the rollout's envs watched (each drawn independently)."""
    correction_steps: int = 15
    """Steps the actor keeps control once the trigger fired."""

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"corrector fraction must be in [0, 1], got {self.fraction}")
        if self.correction_steps < 1:
            raise ValueError(f"correction_steps must be >= 1, got {self.correction_steps}")
        if not isinstance(self.trigger, Trigger):
            raise TypeError(f"trigger must have fire(boundary) -> [B] bool, got {self.trigger!r}")
        if not (isinstance(self.actor, (Person, Policy)) or callable(self.actor)):
            raise TypeError(
                "actor must be a JAX function (state, key) -> action, a Person or a Policy, "
                f"got {self.actor!r}"
            )

    @property
    def person(self) -> Person | None:
        """The actor when it is a person, else None."""
        return self.actor if isinstance(self.actor, Person) else None
