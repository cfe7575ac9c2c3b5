"""A person as the corrector: keyboard control of any env, through the deployer's interface.

With ``--corrector.kind human`` the flywheel's deployment (:func:`anyskill.rollout.rollout`
with a :class:`HumanCorrector` as the corrector's actor, a
:class:`~anyskill.rollout.Person`) runs episode by episode, stepped from Python, and shows
every *watched* episode live in the terminal (24-bit colour, two pixels per character cell)
at ``--corrector.human-hz`` — the env's camera or its own rendering when it has one (the
tabletop, gym-pusht), else a status line (the goal distance and what the person holds) while
the person watches the robot itself (gym-hil's Panda in state mode has no renderer here). The
person:

* takes control at any time with SPACE (a human's decision) and hands back with SPACE;
* is also handed control when the automatic trigger fires (``--corrector.trigger stall`` or
  ``value``), for ``correction_steps`` steps or until SPACE;
* drives the robot with the env's :class:`~anyskill.envs.teleop.Teleop` (its keys are shown
  under the view): the tabletop's pusher and the Panda's end-effector with W/A/S/D or the
  arrows (R/F up and down, G the gripper), gym-pusht's agent by moving its target; X stops;
* presses Q to stop watching: the round's remaining episodes run without a corrector.

Frames under the person's control are recorded with ``intervention=True``, exactly like the
scripted expert's, so the rest of the loop (labels, advantages, "corrected counts as
positive") does not know or care who corrected.

Key input is a :class:`KeySource` (``poll() -> list of key names``): :class:`TerminalKeys`
reads a real terminal in cbreak mode; :class:`ScriptedKeys` replays a script (tests, demos).
A gamepad would be one more ``KeySource``.
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import Protocol, TextIO

import numpy as np

from anyskill.envs.teleop import Teleop, pusher_teleop
from anyskill.policies.base import STATE, Batch
from anyskill.rollout import StepStatus

TOGGLE, STOP, QUIT = "space", "x", "q"
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
HELP = "SPACE take/hand back  X stop  Q stop watching"


class KeySource(Protocol):
    def poll(self) -> list[str]:
        """Keys pressed since the last poll, oldest first (never blocks)."""
        ...


def parse_keys(raw: str) -> list[str]:
    """Terminal bytes -> key names: arrows from their escape sequences, ' ' -> 'space',
    letters lower-cased; other escape sequences are dropped."""
    keys, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\x1b":
            if raw[i + 1 : i + 2] == "[" and raw[i + 2 : i + 3] in _ARROWS:
                keys.append(_ARROWS[raw[i + 2]])
                i += 3
                continue
            i += 1
            while i < len(raw) and not raw[i].isalpha() and raw[i] != "~":
                i += 1
            i += 1
            continue
        keys.append("space" if ch == " " else ch.lower())
        i += 1
    return keys


def require_terminal(stream: TextIO) -> None:
    """Refuse a stream that is not an interactive terminal (before any work is done)."""
    if not stream.isatty():
        raise ValueError(
            "--corrector.kind human reads the keyboard of an interactive terminal, but "
            "stdin is not a terminal; run the command in a terminal, or use "
            "--corrector.kind expert (scripted corrector) or none"
        )


class TerminalKeys:
    """Keys of the controlling terminal, non-blocking (a context manager: cbreak mode inside,
    the terminal's settings restored on exit, also after an exception)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdin
        self._saved = None

    def __enter__(self) -> TerminalKeys:
        import termios
        import tty

        require_terminal(self.stream)
        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None

    def poll(self) -> list[str]:
        fd = self.stream.fileno()
        raw = b""
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            raw += chunk
        return parse_keys(raw.decode(errors="ignore"))


class ScriptedKeys:
    """Replays ``{poll number: keys}`` (polls are counted from 0, one per watched step)."""

    def __init__(self, script: dict[int, list[str]]):
        self.script = dict(script)
        self.polls = 0

    def poll(self) -> list[str]:
        keys = list(self.script.get(self.polls, []))
        self.polls += 1
        return keys


def ansi_image(img: np.ndarray) -> str:
    """An RGB image ``[H, W, 3]`` as terminal text: one character per column and per two rows
    (upper half block, foreground = upper pixel, background = lower pixel)."""
    img = np.asarray(img, np.uint8)
    if img.shape[0] % 2:
        img = np.concatenate([img, img[-1:]], axis=0)
    lines = []
    for top, bot in zip(img[0::2], img[1::2], strict=True):
        cells = (
            f"\x1b[38;2;{a[0]};{a[1]};{a[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580"
            for a, b in zip(top, bot, strict=True)
        )
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines)


class HumanCorrector:
    """A person at a keyboard: who has control, what they hold (their :attr:`teleop`), and the
    live view (a :class:`~anyskill.rollout.Person`)."""

    def __init__(
        self,
        keys: KeySource,
        speed: float = 1.0,
        hz: float = 10.0,
        out: TextIO | None = None,
        view_size: int = 48,
        teleop: Teleop | None = None,
    ):
        """``teleop``: how keys become the env's actions (default: the tabletop's pusher at
        ``speed``, see :func:`anyskill.envs.teleop.pusher_teleop`)."""
        if view_size < 2:
            raise ValueError(f"view_size must be >= 2 pixels, got {view_size}")
        self.view_size = int(view_size)
        if not 0.0 < speed <= 1.0:
            raise ValueError(f"human speed must be in (0, 1] (action magnitude), got {speed}")
        if hz < 0:
            raise ValueError(f"human_hz must be >= 0 (0: as fast as possible), got {hz}")
        self.teleop = pusher_teleop(speed) if teleop is None else teleop
        self.keys, self.hz, self.out = keys, hz, out
        self.watching = True
        self.holding = False
        self.handed_back = False
        self._last = 0.0

    def begin_episode(self) -> None:
        self.holding, self.handed_back = False, False
        self.teleop.reset()

    def read(self) -> None:
        """Apply the keys pressed since the last step."""
        for k in self.keys.poll():
            if k == TOGGLE:
                if self.holding:
                    self.holding, self.handed_back = False, True
                else:
                    self.holding = True
            elif k == STOP:
                self.teleop.stop()
            elif k == QUIT:
                self.watching, self.holding = False, False
            else:
                self.teleop.press(k)

    def take_over(self) -> None:
        """Handed control by the automatic trigger: start still, let the person steer."""
        self.teleop.stop()
        if self.out is not None:
            self.out.write("\a")

    def action(self, obs: Batch | None = None) -> np.ndarray:
        state = None if obs is None or STATE not in obs else np.asarray(obs[STATE])[0]
        return self.teleop.action(state)

    def show(self, frame: np.ndarray | None, lines: list[str]) -> None:
        if self.out is None:
            return
        view = "" if frame is None else ansi_image(frame) + "\n"
        self.out.write("\x1b[H\x1b[2J" + view + "\n".join(lines) + "\n")
        self.out.flush()

    def present(self, frame: np.ndarray | None, status: StepStatus) -> None:
        """Show a step of a watched episode and hold it for the person (see :meth:`pace`)."""
        who = "YOU" if status.correcting else "policy"
        horizon = "?" if status.horizon is None else status.horizon
        where = "" if status.goal_distance is None else f"  to goal: {status.goal_distance:.3f}"
        self.show(
            frame,
            [
                f"episode {status.episode + 1}/{status.num_episodes}  step {status.step}/"
                f"{horizon}  control: {who}{where}",
                f"instruction: {status.instruction}",
                f"you hold: {self.teleop.status()}",
                f"{HELP}  |  {self.teleop.help}",
            ],
        )
        self.pace()

    def pace(self) -> None:
        """Hold each watched step for 1 / hz seconds of wall time, so a person can react."""
        if self.hz <= 0:
            return
        wait = self._last + 1.0 / self.hz - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
