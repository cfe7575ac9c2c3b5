"""Servable policies by name, and the registry of checkpoint loaders.

``anyskill serve`` accepts either a built-in name (``--policy expert:tabletop-reach``) or a
checkpoint directory (``anyskill serve CKPT``). Algorithms plug their checkpoints in with
:func:`register_loader` (a name, ``recognises(path) -> bool`` and ``load(path, **options)
-> Policy``), called when their module is imported; :func:`load_policy` imports the modules
of :data:`LOADER_MODULES` on its first lookup (``policies/`` never imports ``algos/`` at
module level: arrows point from the algorithms to the protocol), asks each loader in turn
whether it recognises the directory, and builds the policy — or says which formats it knows.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anyskill.names import unknown_name
from anyskill.policies.base import Policy

#: modules that register checkpoint loaders when imported, in lookup order
LOADER_MODULES: tuple[str, ...] = (
    "anyskill.algos.vla.policy",
    "anyskill.algos.recap.policy",
    "anyskill.algos.crl.policy",
)


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


class PolicyLoadError(ValueError):
    """A checkpoint cannot be turned into a servable policy."""


@dataclasses.dataclass(frozen=True)
class CheckpointLoader:
    """One checkpoint format."""

    name: str
    """What the format is, for messages (e.g. ``CRL run (anyskill train crl)``)."""
    recognises: Callable[[Path], bool]
    """Cheap test of a path (reads a config, never weights); must not raise."""
    load: Callable[..., Policy]
    """``load(path, **options) -> Policy``."""
    options: tuple[str, ...] = ()
    """Keyword options ``load`` accepts (e.g. ``beta``); others are refused by name."""


#: registered loaders, asked in order
CHECKPOINT_LOADERS: list[CheckpointLoader] = []
#: LOADER_MODULES that could not be imported: module -> the error (named when nothing matches)
_IMPORT_ERRORS: dict[str, str] = {}
_imported = False


def register_loader(
    name: str,
    recognises: Callable[[Path], bool],
    load: Callable[..., Policy],
    options: tuple[str, ...] = (),
) -> None:
    """Add a checkpoint format; registering a name again replaces it in place (a reloaded
    module)."""
    entry = CheckpointLoader(name, recognises, load, tuple(options))
    for i, old in enumerate(CHECKPOINT_LOADERS):
        if old.name == name:
            CHECKPOINT_LOADERS[i] = entry
            return
    CHECKPOINT_LOADERS.append(entry)


def checkpoint_loaders() -> list[CheckpointLoader]:
    """Every registered loader, after importing :data:`LOADER_MODULES` (once)."""
    global _imported
    if not _imported:
        _imported = True
        for module in LOADER_MODULES:
            try:
                importlib.import_module(module)
            except ImportError as e:  # e.g. an optional dependency: the other formats still load
                _IMPORT_ERRORS[module] = str(e)
    return list(CHECKPOINT_LOADERS)


def read_config_json(path: Path) -> dict[str, Any] | None:
    """``path/config.json`` as a dict, or None if ``path`` is not a directory holding a
    readable JSON object there (for ``recognises`` functions, which must not raise)."""
    cfg = Path(path) / "config.json"
    try:
        if not (Path(path).is_dir() and cfg.is_file()):
            return None
        d = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def make_policy(name: str, **overrides) -> Policy:
    """A built-in policy by name, e.g. ``make_policy("random-mlp", width=512)``."""
    if name not in BUILTIN_POLICIES:
        raise unknown_name("policy", name, BUILTIN_POLICIES)
    return BUILTIN_POLICIES[name](**overrides)


def load_policy(path: Path | str, **options) -> Policy:
    """The policy stored in checkpoint directory ``path``; ``options`` go to its format's
    loader (e.g. a flywheel run's ``policy_name``, ``beta``, ``best_of``)."""
    path = Path(path)
    if not path.exists():
        raise PolicyLoadError(f"checkpoint {path}: no such file or directory")
    loaders = checkpoint_loaders()
    for loader in loaders:
        if loader.recognises(path):
            bad = sorted(set(options) - set(loader.options))
            if bad:
                takes = ", ".join(loader.options) or "none"
                raise PolicyLoadError(
                    f"checkpoint {path} is a {loader.name}, which takes no option "
                    f"{', '.join(bad)} (its options: {takes})"
                )
            return loader.load(path, **options)
    known = "; ".join(x.name for x in loaders) or "none"
    broken = "".join(f" ({m} could not be imported: {e})" for m, e in _IMPORT_ERRORS.items())
    raise PolicyLoadError(
        f"checkpoint {path}: not a format anyskill can serve (known checkpoint formats: "
        f"{known}){broken}. Serve a built-in instead with --policy "
        f"{' | '.join(BUILTIN_POLICIES)}"
    )


def resolve(spec: str, **overrides) -> Policy:
    """A built-in name (``overrides``: its constructor's keywords) or a checkpoint path
    (``overrides``: its loader's options)."""
    if spec in BUILTIN_POLICIES:
        return make_policy(spec, **overrides)
    if Path(spec).exists():
        return load_policy(spec, **overrides)
    raise unknown_name("policy (built-in name or existing checkpoint path)", spec, BUILTIN_POLICIES)
