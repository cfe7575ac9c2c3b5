"""Servable policies by name, and the checkpoint plug point.

``anyskill serve`` accepts either a built-in name (``--policy expert:tabletop-reach``) or a
checkpoint directory (``anyskill serve CKPT``). :func:`load_policy` is where trained models
plug in: it walks ``CHECKPOINT_LOADERS`` (recognise, load) and builds the matching
:class:`Policy`, or says clearly that no known format matched. The one entry so far: run
directories of ``anyskill.algos.vla`` (issue 5), loaded lazily through its ``VLAPolicy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from anyskill.names import unknown_name
from anyskill.policies.base import Policy


def _reach(**kw) -> Policy:
    from anyskill.policies.builtin import ReachController

    return ReachController(**kw)


def _random_mlp(**kw) -> Policy:
    from anyskill.policies.builtin import RandomMLP

    return RandomMLP(**kw)


#: name -> constructor taking keyword overrides
BUILTIN_POLICIES: dict[str, Callable[..., Policy]] = {
    "expert:tabletop-reach": _reach,
    "random-mlp": _random_mlp,
}


def _is_policy_run(path: Path) -> bool:
    """A run directory of ``anyskill.algos.vla`` (its config names a model ``arch``)."""
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and isinstance(d.get("model"), dict) and "arch" in d["model"]


def _load_policy_run(path: Path) -> Policy:
    try:
        from anyskill.algos.vla.policy import VLAPolicy
    except ImportError as e:
        raise PolicyLoadError(
            f"checkpoint {path}: a policy run, but anyskill.algos.vla cannot be imported ({e})"
        ) from None
    return VLAPolicy(path)


#: (name, recognises(path) -> bool, load(path) -> Policy); checked in order
CHECKPOINT_LOADERS: list[tuple[str, Callable[[Path], bool], Callable[[Path], Policy]]] = [
    ("policy run (anyskill.algos.vla: vla, mlp-bc, mlp-flow)", _is_policy_run, _load_policy_run),
]


class PolicyLoadError(ValueError):
    """A checkpoint cannot be turned into a servable policy."""


def make_policy(name: str, **overrides) -> Policy:
    """A built-in policy by name, e.g. ``make_policy("random-mlp", width=512)``."""
    if name not in BUILTIN_POLICIES:
        raise unknown_name("policy", name, BUILTIN_POLICIES)
    return BUILTIN_POLICIES[name](**overrides)


def load_policy(path: Path | str) -> Policy:
    """The policy stored in checkpoint directory ``path``."""
    path = Path(path)
    if not path.exists():
        raise PolicyLoadError(f"checkpoint {path}: no such file or directory")
    for _name, recognises, load in CHECKPOINT_LOADERS:
        if recognises(path):
            return load(path)
    known = ", ".join(n for n, _, _ in CHECKPOINT_LOADERS) or "none yet"
    raise PolicyLoadError(
        f"checkpoint {path}: not a format anyskill can serve (known checkpoint formats: "
        f"{known}). Serve a built-in instead with --policy "
        f"{' | '.join(BUILTIN_POLICIES)}"
    )


def resolve(spec: str, **overrides) -> Policy:
    """A built-in name or a checkpoint path."""
    if spec in BUILTIN_POLICIES:
        return make_policy(spec, **overrides)
    if Path(spec).exists():
        if overrides:
            raise PolicyLoadError(f"overrides {sorted(overrides)} apply to built-ins only")
        return load_policy(spec)
    raise unknown_name("policy (built-in name or existing checkpoint path)", spec, BUILTIN_POLICIES)
