"""The flywheel's real-robot deployment: a round's episodes come from robots, not the simulator.

Each round the current policy is served (:class:`~anyskill.serve.server.PolicyServer`) and
robot runtimes — ``anyskill run-robot --upload``, or any openpi client plus an
:class:`~anyskill.serve.episodes.EpisodeUploader` — run episodes against it. Every episode a
robot finishes is sent back on the server's ``/episodes`` channel and appended to the run's
episode store with the round's policy version; frames where a person (or the runtime's
fallback) had control arrive flagged ``intervention``. The round ends when
``episodes`` episodes of this round are in the store, or earlier on a command
(:func:`end_round`: ``anyskill flywheel end-round RUN``, or touching
``RUN/END_ROUND``); the rest of the loop (value, advantages, policy, evaluation) runs
unchanged on what arrived.

A robot that disconnects mid-episode never sends that episode: the store holds only whole
episodes, and the ones it finished before stay. A killed flywheel resumes the round counting
the episodes already stored (the writer is crash-safe).

Timeline of one round::

    flywheel                         server (this process)            robot i
    serve(policy r) ───────────────► listening ◄──── connect ───────── runtime
                                        │ chunks ──────────────────►  execute, maybe take over
                                        │ ◄──── /episodes: episode ── episode ends
    count += 1 ◄──── stored ────────────┘
    count == N or END_ROUND ──► stop serving; value → advantage → policy → evaluate
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anyskill.serve.episodes import EpisodeSink

END_FILE = "END_ROUND"


@dataclasses.dataclass(frozen=True)
class RobotsConfig:
    """Where the flywheel serves robots in ``--deploy robots`` mode."""

    host: str = "127.0.0.1"
    """Interface to serve on (loopback by default; 0.0.0.0 lets robots on the network in —
    see docs/serving.md for what to open)."""
    port: int = 8000
    """TCP port robots connect to (0 picks a free one, printed when the round starts)."""
    wait_s: float = 0.0
    """Longest a round waits for its episodes before it ends with what arrived (0: no limit;
    end it early with `anyskill flywheel end-round RUN`)."""

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"robots port must be in 0..65535, got {self.port}")
        if self.wait_s < 0:
            raise ValueError(f"robots wait_s must be >= 0 (0: no limit), got {self.wait_s}")


def end_round(run_dir: Path | str) -> Path:
    """Ask a running robot round of ``run_dir`` to end with the episodes it has."""
    path = Path(run_dir) / END_FILE
    path.write_text(f"requested at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return path


@dataclasses.dataclass
class RoundResult:
    """How a robot round ended."""

    stored: int
    """Episodes of this round in the store (including ones stored before a resume)."""
    reason: str
    """``episodes`` (the target was reached), ``command`` (END_ROUND) or ``timeout``."""
    url: str


def collect_from_robots(
    policy: Any,
    data_dir: Path,
    policy_version: str,
    episodes: int,
    have: int,
    config: RobotsConfig,
    run_dir: Path,
    log: Callable[[str], None] = print,
    on_listening: Callable[[str], None] | None = None,
) -> RoundResult:
    """Serve ``policy`` to robots until ``episodes`` episodes tagged ``policy_version`` are in
    the store at ``data_dir`` (``have`` of them already are), END_ROUND appears in
    ``run_dir`` or ``config.wait_s`` passes. ``on_listening(url)`` is called once robots can
    connect (tests start their simulated robots there)."""
    from anyskill.data.writer import EpisodeWriter
    from anyskill.serve.server import ServerConfig, ServerThread

    end_file = Path(run_dir) / END_FILE
    end_file.unlink(missing_ok=True)  # a request of an earlier round does not end this one
    count = {"n": have}
    reached = threading.Event()

    def stored(index: int, episode: dict) -> None:
        count["n"] += 1
        log(
            f"episode {index} stored ({count['n']}/{episodes} of {policy_version}; "
            f"{int(episode['intervention'].sum())} frames corrected, success "
            f"{episode['success']})"
        )
        if count["n"] >= episodes:
            reached.set()

    if have >= episodes:
        return RoundResult(have, "episodes", "")
    server_cfg = ServerConfig(host=config.host, port=config.port)
    deadline = time.monotonic() + config.wait_s if config.wait_s else None
    with EpisodeWriter.open(data_dir) as writer:
        sink = EpisodeSink(writer, policy_version, on_stored=stored)
        with ServerThread(policy, server_cfg, episode_sink=sink) as srv:
            log(
                f"serving {policy.spec.name} ({policy_version}) to robots at {srv.url}; "
                f"waiting for {episodes - have} episodes (end early: anyskill flywheel end-round "
                f"{run_dir})"
            )
            if on_listening is not None:
                on_listening(srv.url)
            reason = "episodes"
            while not reached.wait(0.2):
                if end_file.exists():
                    reason = "command"
                    break
                if deadline is not None and time.monotonic() > deadline:
                    reason = "timeout"
                    break
            url = srv.url
    end_file.unlink(missing_ok=True)
    return RoundResult(count["n"], reason, url)
