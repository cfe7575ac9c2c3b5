"""Language-instructed tabletop pushing: physics, tasks, camera and scripted experts."""

from anyskill.envs.tabletop.env import Tabletop, TabletopPhysics, raise_on_faults
from anyskill.envs.tabletop.expert import ScriptedExpert, success_by_family
from anyskill.envs.tabletop.tasks import COLOURS, FAMILIES, SHAPES, TEMPLATES

__all__ = [
    "COLOURS",
    "FAMILIES",
    "SHAPES",
    "TEMPLATES",
    "ScriptedExpert",
    "Tabletop",
    "TabletopPhysics",
    "raise_on_faults",
    "success_by_family",
]
