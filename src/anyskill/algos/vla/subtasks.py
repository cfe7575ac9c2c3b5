"""High-level inference for the VLA (π0.5-style, issue 27): which subtask to work on next.

**The structured choice.** The subtask head (``ModelConfig.subtasks``,
:meth:`anyskill.algos.vla.model.VLA.subtask_logits`) picks one of ``1 + S`` classes:

* class 0, *the task as instructed*: the action expert's prompt is the instruction itself.
  Reach, push and gather decompose into one subtask, the task itself
  (``TaskFamily.subtasks``), so for them this is the only class — and their low level is
  the flat model's, phrasing diversity included;
* class ``1 + k``, *the subtask about object slot k*: sort's decomposition
  (:meth:`anyskill.envs.tabletop.families.sort.Sort.subtasks`), one push per object into the
  zone of its own colour. It renders to that subtask's canonical text, "push the red block
  into the red zone" — a push instruction, so the grounding of colour and shape words in the
  entity tokens that makes push work applies to sort's steps. The head scores each object
  entity token (a pointer), so the choice is "which object", not "which of 12 texts".

**Labels** (:func:`frame_labels`): the sidecar ``meta/anyskill/subtasks.parquet``
(:mod:`anyskill.data.subtasks`) gives each frame a subtask row; a row of the episode's own
family is class 0, another (sort's push steps) is class ``1 + slot`` of the object it
names on that frame's table. Frames labelled "no subtask" or not labelled are masked out of
the cross-entropy, and the action expert reads the instruction there. A dataset without
the sidecar is refused for ``subtasks=True`` (one error naming the file and the command that
writes it): a head trained on nothing would silently act as the flat model.

**Known label lag**: at ~10 % of sort frames the label is already the next object while the
expert still nudges the previous one past the zone edge (the expert calls an object home at
0.8 of the zone's half-width, the predicate at its edge; BENCHMARKS.md "Instruction grammar
and subtask labels"). Those frames teach the action expert "push green" with actions that
still push red; closed-loop that is harmless (the previous object is already inside).

**Oracle** (:func:`oracle`): from the observation (which, in the built-in tabletop, is the
whole scene): the current subtask is kept until its predicate holds (the object's centre in
its zone, as the labels' timing), then the first object, lowest slot first, not in its zone
— one of the expert's two orders (the other, nearest-first, depends on the episode's hidden
style); one-subtask families are class 0.

**Hysteresis** (:func:`hysteresis`): re-predicted at every chunk boundary; a row switches
only when the new best class's probability exceeds the current one's by ``margin``.
"""

from __future__ import annotations

import numpy as np

from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.subtasks import _SLOT, num_objects_of

#: the task as instructed (the only class of one-subtask families)
TASK_CLASS = 0
#: a frame with no class (unlabelled, no subtask active, or not mappable): no loss
NO_CLASS = -1


def tabletop_slots(state_tokens, state_dim: int) -> tuple[int, ...]:
    """Indices into ``state_tokens`` of the tabletop's object slots, in slot order; a
    :class:`ValueError` when the state is not a tabletop observation laid out as the env
    declares it."""
    n = num_objects_of(state_dim)  # raises for a non-tabletop state
    where = {(a, b): j for j, (a, b, _) in enumerate(state_tokens)}
    out = []
    for k in range(n):
        a = 4 + _SLOT * k
        if (a, a + _SLOT) not in where:
            raise ValueError(
                f"state token layout {list(state_tokens)} has no token for object slot {k} "
                f"(features [{a}, {a + _SLOT})); subtasks need the tabletop's entity tokens"
            )
        out.append(where[(a, a + _SLOT)])
    return tuple(out)


def slot_tables(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(colour [..., N], shape [..., N], present [..., N])`` of raw tabletop observations
    ``[..., 4 + 14 N + 8]`` (colour/shape -1 where absent)."""
    state = np.asarray(state)
    n = num_objects_of(state.shape[-1])
    slots = state[..., 4 : 4 + _SLOT * n].reshape(*state.shape[:-1], n, _SLOT)
    present = slots[..., 6] > 0.5
    colour = np.where(present, slots[..., 7:11].argmax(-1), -1)
    shape = np.where(present, slots[..., 11:14].argmax(-1), -1)
    return colour.astype(np.int32), shape.astype(np.int32), present


def frame_labels(
    state: np.ndarray,
    subtask_index: np.ndarray,
    subtask_rows: np.ndarray,
    episode_family: np.ndarray,
) -> np.ndarray:
    """``[N]`` int32 class per frame (:data:`NO_CLASS` where there is none): ``state`` raw
    observations ``[N, D]``, ``subtask_index`` ``[N]`` the sidecar's index per frame
    (negative: none or unlabelled), ``subtask_rows`` ``[S, 7]`` its rows, ``episode_family``
    ``[N]`` the family code of each frame's task."""
    index = np.asarray(subtask_index)
    rows = np.asarray(subtask_rows, np.int64).reshape(-1, T.ROW_WIDTH)
    out = np.full(len(index), NO_CLASS, np.int32)
    ok = index >= 0
    if not ok.any():
        return out
    r = rows[np.where(ok, index, 0)]  # [N, 7]
    own = ok & (r[:, T.FAMILY] == np.asarray(episode_family))
    out[own] = TASK_CLASS
    colour, shape, _ = slot_tables(state)  # [N, K]
    hit = (colour == r[:, T.COLOUR, None]) & (
        (shape == r[:, T.SHAPE, None]) | (r[:, T.SHAPE, None] < 0)
    )
    named = ok & ~own & (r[:, T.COLOUR] >= 0) & hit.any(1)
    out[named] = 1 + np.argmax(hit[named], axis=1)
    return out


def valid_classes(state: np.ndarray) -> np.ndarray:
    """``[B, 1 + N]`` bool: the task class always, object slot ``k`` when it is present."""
    _, _, present = slot_tables(state)
    return np.concatenate([np.ones((len(present), 1), bool), present], axis=1)


def render(prompts: list[str], state: np.ndarray, classes: np.ndarray) -> list[str]:
    """The action expert's prompt per row: the instruction for class 0, the canonical text
    of sort's subtask about slot ``k`` for class ``1 + k`` (the instruction again when that
    slot is empty)."""
    colour, shape, _ = slot_tables(state)
    sort = F.get("sort")
    out = []
    for b, (prompt, c) in enumerate(zip(prompts, np.asarray(classes).tolist(), strict=True)):
        k = c - 1
        if c <= TASK_CLASS or colour[b, k] < 0:
            out.append(prompt)
            continue
        steps = sort.subtasks(sort.row(phrasing=0), colour[b], shape[b])
        step = next(s for s in steps if s.targets[0] == k)
        out.append(T.instruction(step.row))
    return out


def _multi_step(prompt: str) -> bool:
    """Whether the instruction is a task that decomposes into one subtask per object."""
    content = T.parse_instruction(prompt)
    return content is not None and content[T.FAMILY] == F.get("sort").code


def oracle(prompts: list[str], state: np.ndarray, current: np.ndarray | None) -> np.ndarray:
    """``[B]`` the oracle's class per row (module docstring): keep the current object until
    it is in its zone, then the lowest slot not in its zone; class 0 for one-subtask tasks
    (and for instructions no tabletop family produces)."""
    from anyskill.envs.tabletop.scene import ZONE_HALF

    state = np.asarray(state, np.float32)
    colour, _, present = slot_tables(state)
    n = colour.shape[1]
    pos = state[:, 4 : 4 + _SLOT * n].reshape(len(state), n, _SLOT)[..., 0:2]
    zones = state[:, 4 + _SLOT * n : 4 + _SLOT * n + 8].reshape(len(state), 4, 2)
    own = np.take_along_axis(zones, np.maximum(colour, 0)[..., None].repeat(2, -1), axis=1)
    done = np.all(np.abs(pos - own) < ZONE_HALF, axis=-1) | ~present  # [B, N]
    out = np.zeros(len(state), np.int32)
    for b, prompt in enumerate(prompts):
        if not _multi_step(prompt):
            continue
        c = -1 if current is None else int(current[b])
        if c >= 1 and present[b, c - 1] and not done[b, c - 1]:
            out[b] = c
            continue
        todo = np.flatnonzero(~done[b])
        out[b] = 1 + int(todo[0]) if len(todo) else max(c, 1)
    return out


def hysteresis(
    probs: np.ndarray, current: np.ndarray | None, margin: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """``[B]`` the subtask per row: the most probable valid class, except that a row with a
    current class (``current[b] >= 0``, still valid) keeps it unless the best one's
    probability exceeds the current one's by more than ``margin``."""
    p = np.asarray(probs, np.float64)
    if valid is not None:
        p = np.where(valid, p, -np.inf)
    best = np.argmax(p, axis=-1).astype(np.int32)
    if current is None:
        return best
    cur = np.asarray(current, np.int32)
    keep = cur >= 0
    safe = np.maximum(cur, 0)
    p_cur = np.take_along_axis(p, safe[:, None], -1)[:, 0]
    p_best = np.take_along_axis(p, best[:, None], -1)[:, 0]
    keep &= np.isfinite(p_cur) & ~(p_best > p_cur + margin)
    return np.where(keep, cur, best).astype(np.int32)


#: the modes of :class:`SubtaskSelector` (``anyskill eval policy --subtasks``)
MODES = ("predicted", "oracle", "none")


class SubtaskSelector:
    """The high level of a hierarchical policy, between its observation and its action
    expert: at every call (a chunk boundary) picks each row's subtask — ``predicted`` (the
    head, with :func:`hysteresis`), ``oracle`` (:func:`oracle`) or ``none`` (the task as
    instructed) — and rewrites the model's prompt to the subtask's text.

    Per-row state (the current subtask, the oracle's) lives here between calls of one batch
    of episodes; :meth:`start_episodes` (called by the rollout at every wave's start) clears
    it. A caller that keeps the state itself (the server: a client echoes the subtask it was
    sent) passes ``current`` explicitly and the stored state is left alone. ``log`` keeps,
    per call, the chosen and the oracle's classes (subtask accuracy, :meth:`accuracy`)."""

    def __init__(self, model, normalizer, mode: str = "predicted", margin: float = 0.2):
        import jax

        if mode not in MODES:
            from anyskill.names import unknown_name

            raise unknown_name("subtask mode", mode, MODES)
        if not margin >= 0:
            raise ValueError(f"subtask margin must be >= 0, got {margin} (e.g. 0.2)")
        if not model.cfg.subtasks:
            raise ValueError(
                f"--subtasks {mode} needs a model trained with --model.subtasks (this one has "
                "no subtask head); evaluate it with --subtasks none"
            )
        self.mode, self.margin = mode, float(margin)
        self.max_text_len = model.cfg.max_text_len

        def probs(params, obs):
            return model.subtask_probs(params, obs.replace(state=normalizer.state(obs.state)))

        self._probs = jax.jit(probs)
        self.start_episodes()
        self.log: list[tuple[np.ndarray, np.ndarray]] = []
        self.texts: list[list[str]] = []  # per call, each row's subtask text (video captions)

    def start_episodes(self, n: int | None = None) -> None:
        """New episodes start in every row: no current subtask."""
        self.current: np.ndarray | None = None
        self._oracle: np.ndarray | None = None

    def copy(self) -> SubtaskSelector:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.log, new.texts = [], []
        new.start_episodes()
        return new

    def select(self, params, state, prompts, obs, current=None) -> tuple[np.ndarray, list[str]]:
        """``(classes [B], texts)`` for raw ``state`` ``[B, D]``, ``prompts`` and the model's
        inputs ``obs`` (raw state, instruction tokens)."""
        state = np.asarray(state, np.float32)
        n = len(state)
        explicit = current is not None
        mine = self.current if (self.current is not None and len(self.current) == n) else None
        cur = np.asarray(current, np.int32) if explicit else mine
        prev_oracle = self._oracle if (self._oracle is not None and len(self._oracle) == n) else cur
        orc = oracle(prompts, state, None if explicit else prev_oracle)
        if self.mode == "predicted":
            p = np.asarray(self._probs(params, obs))
            classes = hysteresis(p, cur, self.margin, valid_classes(state))
        elif self.mode == "oracle":
            classes = orc
        else:
            classes = np.zeros(n, np.int32)
        texts = render(list(prompts), state, classes)
        if not explicit:
            self.current, self._oracle = classes, orc
            self.log.append((classes.copy(), orc.copy()))
            self.texts.append(texts)
        return classes, texts

    def lower(self, params, state, prompts, obs, current=None, suffix: str = ""):
        """``(obs with the subtask texts as tokens, classes, texts)``."""
        import jax.numpy as jnp

        from anyskill.nets.transformer import tokenize
        from anyskill.policies.base import PROMPT, ObservationError

        classes, texts = self.select(params, state, prompts, obs, current)
        try:
            tokens, mask = tokenize([t + suffix for t in texts], self.max_text_len)
        except ValueError as e:
            raise ObservationError(PROMPT, str(e)) from None
        low = obs.replace(tokens=jnp.asarray(tokens), text_mask=jnp.asarray(mask))
        return low, classes, texts

    def classes_of(self, state, prompts, texts) -> np.ndarray:
        """``[B]`` the class whose rendered text is ``texts[b]`` on row ``b`` (-1: none, e.g.
        an empty or foreign text): how a client's echoed subtask becomes the current one."""
        state = np.asarray(state, np.float32)
        k = valid_classes(state).shape[1]
        rendered = [render(list(prompts), state, np.full(len(state), c)) for c in range(k)]
        out = np.full(len(state), -1, np.int32)
        for b, text in enumerate(texts):
            text = " ".join(str(text or "").split())
            for c in [*range(1, k), TASK_CLASS]:  # an object's text before the instruction
                if text and rendered[c][b] == text:
                    out[b] = c
                    break
        return out

    def accuracy(self, length: np.ndarray, replan_every: int) -> np.ndarray:
        """Per row, the fraction of its chunk boundaries (before its episode ended, from
        ``length``) at which the chosen subtask was the oracle's; NaN for a row without
        any. Reads the calls in :attr:`log` made with this many rows (clear it between
        evaluations)."""
        length = np.asarray(length)
        hits = np.zeros(len(length))
        count = np.zeros(len(length))
        for c, (chosen, orc) in enumerate(self.log):
            if len(chosen) != len(length):
                continue
            alive = c * replan_every < length
            hits += alive & (chosen == orc)
            count += alive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, hits / np.maximum(count, 1), np.nan)
