"""A person as the corrector: keyboard control of the pusher, through the deployer's interface.

With ``--corrector.kind human`` the flywheel's deployment runs episode by episode, stepped
from Python, and shows every *watched* episode live in the terminal (24-bit colour, two
pixels per character cell) at ``--corrector.human-hz``. The person:

* takes control at any time with SPACE (a human's decision) and hands back with SPACE;
* is also handed control when the automatic trigger fires (``--corrector.trigger stall`` or
  ``value``), for ``correction_steps`` steps or until SPACE;
* steers with W/A/S/D or the arrow keys (the pusher keeps the last direction; X stops);
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
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.evaluate import instruction_tokens, make_observe
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import Tabletop

#: key name -> pusher direction (x right, y towards the far edge of the table)
DIRECTIONS = {
    "w": (0.0, 1.0),
    "up": (0.0, 1.0),
    "s": (0.0, -1.0),
    "down": (0.0, -1.0),
    "a": (-1.0, 0.0),
    "left": (-1.0, 0.0),
    "d": (1.0, 0.0),
    "right": (1.0, 0.0),
}
TOGGLE, STOP, QUIT = "space", "x", "q"
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
HELP = "SPACE take/hand back  W/A/S/D or arrows steer  X stop  Q stop watching"


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
    """A person at a keyboard: who has control, which way to push, and the live view."""

    def __init__(
        self,
        keys: KeySource,
        speed: float = 1.0,
        hz: float = 10.0,
        out: TextIO | None = None,
    ):
        if not 0.0 < speed <= 1.0:
            raise ValueError(f"human speed must be in (0, 1] (action magnitude), got {speed}")
        if hz < 0:
            raise ValueError(f"human_hz must be >= 0 (0: as fast as possible), got {hz}")
        self.keys, self.speed, self.hz, self.out = keys, speed, hz, out
        self.watching = True
        self.holding = False
        self.direction = np.zeros(2, np.float32)
        self.handed_back = False
        self._last = 0.0

    def begin_episode(self) -> None:
        self.holding, self.handed_back = False, False
        self.direction = np.zeros(2, np.float32)

    def read(self) -> None:
        """Apply the keys pressed since the last step."""
        for k in self.keys.poll():
            if k == TOGGLE:
                if self.holding:
                    self.holding, self.handed_back = False, True
                else:
                    self.holding = True
            elif k == STOP:
                self.direction = np.zeros(2, np.float32)
            elif k == QUIT:
                self.watching, self.holding = False, False
            elif k in DIRECTIONS:
                self.direction = np.asarray(DIRECTIONS[k], np.float32)

    def take_over(self) -> None:
        """Handed control by the automatic trigger: start still, let the person steer."""
        self.direction = np.zeros(2, np.float32)
        if self.out is not None:
            self.out.write("\a")

    def action(self) -> np.ndarray:
        return self.speed * self.direction

    def show(self, frame: np.ndarray, lines: list[str]) -> None:
        if self.out is None:
            return
        self.out.write("\x1b[H\x1b[2J" + ansi_image(frame) + "\n" + "\n".join(lines) + "\n")
        self.out.flush()

    def pace(self) -> None:
        """Hold each watched step for 1 / hz seconds of wall time, so a person can react."""
        if self.hz <= 0:
            return
        wait = self._last + 1.0 / self.hz - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()


def make_human_deployer(
    env: Tabletop,
    chunk_fn: Callable[[Any, jax.Array, Any], jax.Array],
    num_episodes: int,
    replan_every: int,
    image_size: int,
    num_cameras: int,
    max_text_len: int,
    prompt_suffix: str,
    corrector,
    value_fn=None,
    record_images: int = 0,
    human: HumanCorrector | None = None,
):
    """``deploy(params, key, value_params=None) -> Episodes``, like
    :func:`anyskill.flywheel.deploy.make_deployer` but one episode at a time, stepped from
    Python, with a person (``human``, or the terminal's keyboard when None) as the corrector
    of the watched episodes."""
    from anyskill.flywheel.deploy import Episodes, goal_distance, stalled

    rows, tokens = instruction_tokens(env, max_text_len, prompt_suffix)
    horizon = int(env.episode_length)
    n_steps = -(-horizon // replan_every) * replan_every
    view = max(48, record_images)

    reset = jax.jit(lambda k: jax.vmap(env.reset)(k[None]))
    obs_fn = jax.jit(make_observe(env, 1, image_size, num_cameras, rows, tokens))
    chunk = jax.jit(lambda params, k, obs: chunk_fn(params, k, obs)[0, :replan_every])
    step = jax.jit(lambda s, a: jax.vmap(env.step)(s, jnp.asarray(a)[None]))
    frame = jax.jit(
        lambda s, size: env.render_image(jax.tree.map(lambda x: x[0], s.physics), size),
        static_argnums=1,
    )
    dist_fn = jax.jit(lambda s: goal_distance(env, s.obs, s.goal)[0])
    value_jit = jax.jit(value_fn) if value_fn is not None else None

    def one(rec, ok, fam, text) -> Episodes:
        was_done = np.stack(rec["done"])[None]
        return Episodes(
            state=np.stack(rec["obs"])[None],
            goal=np.stack(rec["goal"])[None],
            action=np.stack(rec["act"])[None],
            intervention=np.stack(rec["iv"])[None],
            length=(~was_done).sum(1),
            success=np.asarray([ok]),
            family=np.asarray([fam]),
            task=[text],
            images=np.stack(rec["img"])[None] if record_images else None,
        )

    def run(params, key, value_params, person: HumanCorrector, first, on_episode) -> Episodes:
        k_watch, k_eps = jax.random.split(key)
        watched = np.asarray(jax.random.uniform(k_watch, (num_episodes,)) < corrector.fraction)
        done_eps = []
        for e, k_ep in enumerate(jax.random.split(k_eps, num_episodes)):
            if e < first:
                continue
            k_reset, k_run = jax.random.split(k_ep)
            state = reset(k_reset)
            text = env.instruction(jax.tree.map(lambda x: x[0], state.physics))
            family = int(np.asarray(state.physics.task)[0, T.FAMILY])
            person.begin_episode()
            rec = {k: [] for k in ("obs", "goal", "act", "iv", "done", "img")}
            done, ok, left, dists, plan = False, False, 0, [], None
            plan_keys = jax.random.split(k_run, n_steps // replan_every)
            for t in range(n_steps):
                watching = bool(watched[e]) and person.watching
                if t % replan_every == 0 and not done:
                    obs = obs_fn(state)
                    plan = np.asarray(chunk(params, plan_keys[t // replan_every], obs))
                    if (
                        watching
                        and corrector.trigger != "human"
                        and left == 0
                        and not person.holding
                    ):
                        dists.append(float(dist_fn(state)))
                        if (
                            corrector.trigger == "value"
                            and value_jit is not None
                            and value_params is not None
                        ):
                            fire = (
                                float(value_jit(value_params, obs)[0]) < corrector.value_threshold
                            )
                        else:
                            fire = bool(stalled(dists, corrector, replan_every))
                        if fire:
                            left = corrector.correction_steps
                            person.take_over()
                if watching and not done:
                    person.read()
                    if person.handed_back:
                        left, person.handed_back = 0, False
                correcting = (person.holding or left > 0) and watching and not done
                a = person.action() if correcting else plan[t % replan_every]
                a = np.asarray(a, np.float32)
                if watching and not done:
                    who = "YOU" if correcting else "policy"
                    person.show(
                        np.asarray(frame(state, view)),
                        [
                            f"episode {e + 1}/{num_episodes}  step {t}/{horizon}  control: {who}",
                            f"instruction: {text}",
                            HELP,
                        ],
                    )
                    person.pace()
                rec["obs"].append(np.asarray(state.obs[0]))
                rec["goal"].append(np.asarray(state.goal[0]))
                rec["act"].append(a)
                rec["iv"].append(correcting)
                rec["done"].append(done)
                rec["img"].append(
                    np.asarray(frame(state, record_images)) if record_images else np.uint8(0)
                )
                if not done:
                    state = step(state, a)
                    ended = bool(state.terminated[0] | state.truncated[0])
                    ok = bool(state.success[0]) and ended
                    done = ended
                    left = max(left - 1, 0)
            ep = one(rec, ok, family, text)
            if on_episode is not None:
                on_episode(ep)
            done_eps.append(ep)
        return concat(done_eps) if done_eps else None

    def deploy(params, key, value_params=None, first: int = 0, on_episode=None):
        """Episodes ``first ..`` of the round (earlier ones were stored before a restart);
        ``on_episode(episode)`` is called with each one-episode ``Episodes`` as it ends."""
        if human is not None:
            return run(params, key, value_params, human, first, on_episode)
        with TerminalKeys() as keys:
            person = HumanCorrector(keys, out=sys.stdout, hz=corrector.human_hz)
            return run(params, key, value_params, person, first, on_episode)

    return deploy


def concat(episodes: list) -> Any:
    """One ``Episodes`` from several with the same number of frames each."""
    import dataclasses

    from anyskill.flywheel.deploy import Episodes

    def cat(name):
        parts = [getattr(e, name) for e in episodes]
        if parts[0] is None:
            return None
        return sum(parts, []) if isinstance(parts[0], list) else np.concatenate(parts)

    return Episodes(**{f.name: cat(f.name) for f in dataclasses.fields(Episodes)})
