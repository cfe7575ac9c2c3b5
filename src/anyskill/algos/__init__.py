"""The training algorithms, by name: each names its config dataclass and its train entry
(``train(config) -> result``), imported only when used so that listing them costs nothing.

``anyskill train NAME`` parses ``NAME``'s config from the command line and calls its train
entry; a new algorithm is one :func:`register` call (in this module, or in its own package's
``__init__``) — the CLI needs no edit unless it wants more than parse-train-print.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from anyskill.names import unknown_name


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One trainable algorithm."""

    name: str
    """Registry name, and the ``anyskill train NAME`` subcommand."""
    summary: str
    """One line for ``anyskill train --help``."""
    config: str
    """``"module:Class"`` of its frozen config dataclass (every field a CLI flag)."""
    train: str
    """``"module:function"`` of its train entry, ``train(config) -> result``."""
    aliases: tuple[str, ...] = ()
    """Other subcommand words for it (kept for commands users already type)."""

    def __post_init__(self):
        for field in ("config", "train"):
            ref = getattr(self, field)
            if ref.count(":") != 1 or not all(ref.partition(":")[::2]):
                raise ValueError(
                    f"algorithm {self.name!r}: {field} must be 'module:attribute', got {ref!r}"
                )

    @property
    def config_class(self) -> type:
        return _load(self.config)

    @property
    def train_fn(self) -> Callable[[Any], Any]:
        return _load(self.train)

    @property
    def commands(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


#: every registered algorithm by name, in registration order
ALGORITHMS: dict[str, Algorithm] = {}


def register(algo: Algorithm) -> Algorithm:
    """Add ``algo``; its name and aliases must be new."""
    taken = {c for a in ALGORITHMS.values() for c in a.commands}
    clash = sorted(set(algo.commands) & taken)
    if clash:
        raise ValueError(f"algorithm {algo.name!r}: {clash} already registered")
    ALGORITHMS[algo.name] = algo
    return algo


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name`` (or with ``name`` as an alias); an unknown name
    is refused with the closest known ones."""
    for algo in ALGORITHMS.values():
        if name in algo.commands:
            return algo
    raise unknown_name("algorithm", name, [c for a in ALGORITHMS.values() for c in a.commands])


register(
    Algorithm(
        "crl",
        "contrastive RL: goal-conditioned, self-supervised, no reward",
        config="anyskill.algos.crl.config:CRLConfig",
        train="anyskill.algos.crl.run:train_run",
    )
)
register(
    Algorithm(
        "vla",
        "π0-style VLA or MLP baseline from demonstrations",
        config="anyskill.algos.vla.config:TrainConfig",
        train="anyskill.algos.vla.train:train",
        aliases=("policy",),
    )
)
register(
    Algorithm(
        "recap",
        "RECAP: learn from experience with the deployment flywheel (= anyskill flywheel)",
        config="anyskill.flywheel.config:FlywheelConfig",
        train="anyskill.flywheel.loop:run_flywheel",
    )
)
