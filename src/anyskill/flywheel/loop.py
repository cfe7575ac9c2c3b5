"""The deployment flywheel (π*0.6's RECAP) on the built-in tabletop tasks: the driver.

Set-up (once, :meth:`~anyskill.flywheel.context.RunContext.open`): record scripted
demonstrations into ``RUN/data`` and train the starting policy (``RUN/start``, an ordinary
``anyskill train policy`` run). Then each round runs the phases of
:data:`anyskill.flywheel.phases.PHASES` by name, in order:

1. **collect** — deploy the current RECAP policy (round 1: the starting policy) on
   ``episodes_per_round`` envs with a corrector on call; every episode goes into the episode
   store with ``source="autonomous"`` (or ``"corrected"`` when the corrector intervened),
   ``policy_version="recap-r{k}"``, per-frame ``intervention`` and the predicate's success
   label (or none, for ``--labels human``);
2. **label** — with human labels, wait until ``anyskill label RUN/data`` has labelled them;
3. **value** — train the distributional value function on everything collected so far
   (pretrained in round 1, fine-tuned after);
4. **advantage** — n-step advantages of every frame, a per-family threshold marking the best
   ``positive_fraction`` positive, corrected frames positive;
5. **policy** — fine-tune RECAP on all data with the advantage indicator (dropped 30 % of
   the time), as a learned input of the action expert or as words of the prompt; the
   baselines (behaviour cloning on all data, filtered BC on successful episodes) are
   fine-tuned from their previous round on the same data;
6. **evaluate** — every policy without a corrector: success, failure rate, time to success,
   throughput (successes per hour of robot time); the value function's early failure
   detection on this round's rollouts;
7. **report** — ``RUN/report.md`` with the tables, plots and videos so far.

``RUN/state.json`` (a :class:`~anyskill.flywheel.artifacts.FlywheelState`) records the
finished phases; a killed run restarts (``--resume``) at the phase it was in, and every
phase's outputs are written atomically (see :mod:`anyskill.flywheel.phases` for why each
phase may run again after a kill). ``config.json`` and ``state.json`` are read strictly
(see :mod:`anyskill.rundir`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from anyskill import rundir
from anyskill.flywheel import phases
from anyskill.flywheel.artifacts import FlywheelState, RunPaths
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.context import RunContext
from anyskill.flywheel.phases import NeedsLabels

__all__ = ["NeedsLabels", "RESUMABLE", "config_changes", "run_flywheel", "saved_config"]


def run_flywheel(cfg: FlywheelConfig, human=None, robots_listening=None) -> FlywheelState:
    """Run (or with ``cfg.resume`` continue) the flywheel in ``cfg.run_dir``; returns the
    final state. ``human``: the person correcting with ``--corrector.kind human`` (None: the
    terminal's keyboard, which must be an interactive terminal). ``robots_listening(url)``:
    with ``--deploy robots``, called each round once robots can connect."""
    if cfg.corrector.kind == "human" and human is None:
        from anyskill.flywheel.human import require_terminal

        require_terminal(sys.stdin)
    paths = RunPaths(Path(cfg.run_dir))
    check_resume(cfg, paths)
    st = FlywheelState.read(paths.state)  # a broken state.json is refused before any write
    paths.root.mkdir(parents=True, exist_ok=True)
    rundir.write_json(paths.config, rundir.config_to_json(cfg))
    ctx = RunContext.open(cfg, human)
    ctx.robots_listening = robots_listening
    while st.round <= cfg.rounds:
        for name, phase in phases.PHASES.items():
            if name in st.done:
                continue
            st = phase(ctx, st)
            st = dataclasses.replace(st, done=(*st.done, name))
            st.write(paths.state)
        st = dataclasses.replace(st, round=st.round + 1, done=())
        st.write(paths.state)
    return st


def check_resume(cfg: FlywheelConfig, paths: RunPaths) -> None:
    """Refuse to start over an existing run, to resume where there is none, and to resume
    with settings other than the run's (nothing is written before these checks)."""
    if cfg.resume and not paths.config.exists():
        raise ValueError(
            f"--resume: {paths.root} holds no flywheel run (no config.json); drop --resume "
            "to start one there, or give the --run-dir of the run to continue"
        )
    fleet_state = paths.root / "fleet" / "state.json"  # a --cluster run's
    if (paths.state.exists() or fleet_state.exists()) and not cfg.resume:
        raise ValueError(
            f"{paths.root} already holds a flywheel run; pass --resume to continue it or "
            "choose another --run-dir (nothing was overwritten)"
        )
    if cfg.resume:
        # strict: a missing field, an unknown key or a wrong type is refused, not defaulted
        saved = rundir.config_to_json(rundir.load_config(FlywheelConfig, paths.config))
        default = rundir.config_to_json(FlywheelConfig())
        changed = config_changes(saved, rundir.config_to_json(cfg), default)
        if changed:
            raise ValueError(
                f"{paths.root} was started with other settings: "
                + "; ".join(f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, a, b in changed)
                + ". Resume with the run's settings (see its config.json; only "
                + ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE if k != "resume")
                + " may change) or choose another --run-dir (nothing was overwritten)"
            )


#: settings a resumed run may change (run_dir: the same directory may be spelled differently;
#: a --cluster run may continue on another cluster, with other workers or a larger budget)
RESUMABLE = ("rounds", "resume", "progress", "videos", "run_dir", "cluster", "fleet")


def config_changes(saved: dict, now: dict, default: dict, prefix: str = "") -> list:
    """``(flag, saved, now)`` of every setting that differs, except :data:`RESUMABLE` (nested
    configs as ``value.steps``); a setting an older run's config lacks counts as its
    ``default``."""
    out = []
    for k, v in now.items():
        if not prefix and k in RESUMABLE:
            continue
        was = saved.get(k, default.get(k))
        if isinstance(v, dict) and isinstance(was, dict):
            out += config_changes(was, v, default.get(k) or {}, f"{prefix}{k}.")
        elif was != v:
            out.append((prefix + k, was, v))
    return out


def saved_config(run_dir: Path) -> FlywheelConfig:
    """The configuration a flywheel run in ``run_dir`` was started with (its config.json,
    read strictly: see :func:`anyskill.rundir.load_config`)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no flywheel run (no config.json)")
    cfg = rundir.load_config(FlywheelConfig, path)
    return dataclasses.replace(cfg, run_dir=Path(run_dir))
