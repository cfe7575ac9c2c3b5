"""Pure-JAX environments and the registry that names them."""

from __future__ import annotations

from anyskill.envs.base import Env, State
from anyskill.envs.maze import LAYOUTS, PointMaze
from anyskill.names import unknown_name

#: env name -> constructor. Names are what ``--env`` accepts.
REGISTRY = {f"pointmaze-{name}": (lambda n=name: PointMaze(layout_name=n)) for name in LAYOUTS}


def make(name: str, **overrides) -> Env:
    """Build a registered environment, e.g. ``make("pointmaze-u")``."""
    if name not in REGISTRY:
        raise unknown_name("env", name, REGISTRY)
    if overrides:
        layout = name.removeprefix("pointmaze-")
        return PointMaze(layout_name=layout, **overrides)
    return REGISTRY[name]()


def eval_env_name(name: str) -> str:
    """The far-goal evaluation variant of an env, if it has one (else the env itself)."""
    return name if name.endswith("-eval") or f"{name}-eval" not in REGISTRY else f"{name}-eval"


__all__ = ["Env", "State", "PointMaze", "REGISTRY", "make", "eval_env_name"]
