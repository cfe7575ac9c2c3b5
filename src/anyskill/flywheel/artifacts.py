"""What a flywheel run keeps on disk, and its run state.

``RUN/`` holds::

    config.json            the FlywheelConfig (strict, see anyskill.rundir)
    state.json             FlywheelState: the round, its finished phases, evaluation rows
    data/                  the episode store: demonstrations, then every round's rollouts
    start/                 the starting policy (an `anyskill train policy` run)
    value.msgpack          the latest value function (meta: round, loss, trained_on_episodes)
    policies/NAME.msgpack  the latest weights of each method (meta: round)
    advantage-rK.npz       round K's values, advantages, indicator, family (q with chunk)
    detection-rK.json      held-out failure detection of round K (from round 2 on)
    diagnosis-rK.json      how much action information round K's labels carry (--diagnose)
    rollouts-NAME.gif      rollout videos of the last round, captions in videos.json
    report.md, results.json, rounds.png, values.png

Every file is written atomically; the report reads these files only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyskill import rundir

if TYPE_CHECKING:  # config imports the flywheel's modules; only the type is needed here
    from anyskill.flywheel.config import FlywheelConfig

#: every method the flywheel can train, in the order a round trains, evaluates and reports
#: them (each method's seed follows its place in :func:`methods`: add new ones at the end)
METHODS = ("recap", "bc", "filtered", "awr")
#: how each method is named in reports
LABELS = {
    "start": "starting policy",
    "recap": "RECAP",
    "bc": "BC (all data)",
    "filtered": "filtered BC",
    "awr": "AWR",
}


def methods(cfg: FlywheelConfig) -> tuple[str, ...]:
    """The methods a run with ``cfg`` trains, evaluates and reports every round: RECAP; BC on
    all data and filtered BC with ``--baselines``; advantage-weighted regression when
    ``--awr-beta`` is set."""
    on = {
        "recap": True,
        "bc": cfg.baselines,
        "filtered": cfg.baselines,
        "awr": cfg.awr_beta is not None,
    }
    return tuple(m for m in METHODS if on[m])


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The files of a flywheel run in ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def start(self) -> Path:
        return self.root / "start"

    @property
    def value(self) -> Path:
        return self.root / "value.msgpack"

    @property
    def videos(self) -> Path:
        return self.root / "videos.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def policy(self, name: str) -> Path:
        return self.root / "policies" / f"{name}.msgpack"

    def advantage(self, rnd: int) -> Path:
        return self.root / f"advantage-r{rnd}.npz"

    def detection(self, rnd: int) -> Path:
        return self.root / f"detection-r{rnd}.json"

    def diagnosis(self, rnd: int) -> Path:
        """Round ``rnd``'s label diagnostic (``--diagnose``)."""
        return self.root / f"diagnosis-r{rnd}.json"

    def video(self, name: str) -> Path:
        return self.root / f"rollouts-{name}.gif"


def policy_version(rnd: int, deployed: str = "recap") -> str:
    """``policy_version`` of the episodes round ``rnd`` collects with round ``rnd - 1``'s
    policy of method ``deployed`` (``--deploy-with``; round 1: ``recap-r0``, the starting
    policy, whatever deploys later)."""
    return f"{deployed if rnd > 1 else 'recap'}-r{rnd - 1}"


@dataclasses.dataclass(frozen=True)
class FlywheelState:
    """Where a run stands (``RUN/state.json``)."""

    round: int = 1
    """The round in progress (1-based; ``rounds + 1`` once every round is done)."""
    done: tuple[str, ...] = ()
    """Phases of this round already finished, in order."""
    rows: tuple[Any, ...] = ()
    """Evaluation rows so far: ``{round, method, success, failure, time_to_success_s,
    throughput_per_h, episodes, ...}`` per method and round, and one deployment row per round."""
    detection: tuple[Any, ...] = ()
    """Held-out failure detection per round (the contents of ``detection-rK.json``)."""

    @classmethod
    def read(cls, path: Path) -> FlywheelState:
        """The state in ``path`` (a new run's when it does not exist), read strictly: a
        missing field, an unknown key or a wrong type is refused naming the file."""
        path = Path(path)
        if not path.exists():
            return cls()
        return rundir.load_config(cls, path)

    def write(self, path: Path) -> None:
        rundir.write_json(path, self.to_json())  # atomic; never NaN

    def to_json(self) -> dict:
        return rundir.config_to_json(self)
