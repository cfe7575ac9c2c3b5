"""What every deployable policy offers: a declared input spec and batched chunk inference.

This is the boundary between learning (``algos/``) and deployment (``serve/``): the policy
server, the robot-side runtime and the evaluation harness only see this interface.

Observations cross it as flat dicts keyed like openpi's examples (``"observation/state"``,
``"observation/image"``, ``"prompt"``), numpy arrays plus the instruction string, so a robot
client needs neither JAX nor anyskill.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Observation field names every anyskill policy and env agree on (openpi's example keys).
STATE = "observation/state"
"""float32 ``[state_dim]``: proprioception (and, for the built-in sims, the scene state)."""
IMAGE = "observation/image"
"""uint8 ``[S, S, 3]``: the (first) camera."""
GOAL = "observation/goal"
"""float32 ``[goal_dim]``: the goal of a goal-conditioned policy (CRL)."""
PROMPT = "prompt"
"""str: the language instruction."""
INDICATOR = "advantage_indicator"
"""int32 scalar: RECAP's advantage indicator as a model input (see ``policies.wrappers``);
set by :class:`~anyskill.policies.wrappers.IndicatorConditioned`, never sent by a client."""

#: Real-time chunking (optional request fields, read by policies whose spec announces
#: ``realtime``): the actions the robot will still execute from the observation's step on
#: (the rest of its current plan, env units, float32 ``[L, action_dim]``, L <= the chunk's
#: horizon) ...
ACTION_PREFIX = "realtime/action_prefix"
#: ... and how many control steps pass before the new chunk can arrive (int): that many
#: actions of the prefix are executed whatever the new chunk says, so it must start with
#: them. A :data:`Batch` carries the prefixes padded to the horizon, their lengths under
#: :data:`PREFIX_LENGTH` and the delays under :data:`ACTION_DELAY` (``[B]`` ints).
ACTION_DELAY = "realtime/delay"
PREFIX_LENGTH = "realtime/prefix_length"

#: The subtask a hierarchical policy works on (issue 27), as text: a served hierarchical
#: policy's reply carries it beside ``actions``; a client may send back the last one it got
#: (optional request field, str) so the policy's hysteresis continues from it.
SUBTASK = "subtask"
#: longest subtask text a request may carry
MAX_SUBTASK_CHARS = 512

#: values of the :data:`INDICATOR` field (and of a VLA's ``Obs.indicator``): no indicator
#: (the unconditioned policy), "advantage: positive", "advantage: negative"
INDICATOR_NONE, INDICATOR_POSITIVE, INDICATOR_NEGATIVE = 0, 1, 2
#: RECAP's indicator as words of the prompt (π*0.6 appends them to the instruction)
INDICATOR_TEXT = {True: "advantage: positive", False: "advantage: negative"}


def prompt_with_indicator(task: str, positive: bool | None) -> str:
    """``task`` unchanged when ``positive is None``; else ``task + ", " + INDICATOR_TEXT[positive]``."""
    return task if positive is None else f"{task}, {INDICATOR_TEXT[bool(positive)]}"


#: A batch of observations: field name -> array with a leading batch axis ``[B, ...]``, or a
#: list of ``B`` strings for ``str`` fields (the prompt).
Batch = dict[str, Any]


class ObservationError(ValueError):
    """An observation does not match the policy's input spec; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One observation field."""

    name: str
    """Key in the observation dict, e.g. ``observation/state``."""
    shape: tuple[int, ...]
    """Shape of one observation (no batch axis); ``()`` for the prompt."""
    dtype: str
    """numpy dtype name (``float32``, ``uint8``), or ``str`` for the instruction."""
    description: str = ""
    max_length: int = 0
    """For ``str`` fields: the longest accepted text, in words."""


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """What a policy reads and what it returns."""

    inputs: tuple[InputSpec, ...]
    action_dim: int
    action_horizon: int
    """Actions per chunk returned by ``infer``."""
    control_hz: float
    """Rate the chunk's actions are meant to be executed at."""
    name: str = "policy"
    execute_horizon: int | None = None
    """Actions of each chunk the policy was trained to execute before replanning (a VLA's
    ``replan_every``); None: the whole chunk. Announced to clients, whose runtime executes
    this many by default."""

    realtime: str | None = None
    """How the policy continues a committed prefix (:data:`ACTION_PREFIX`), announced to
    clients: ``"guided"`` (inpainting by guidance, any flow policy), ``"trained"`` (a
    delay-aware model takes it as input); None: it ignores those fields."""
    max_delay: int | None = None
    """With ``realtime="trained"``: the largest delay it was trained on (longer ones are
    clamped: only that many actions are frozen)."""

    def __post_init__(self):
        if self.execute_horizon is not None and not 1 <= self.execute_horizon <= (
            self.action_horizon
        ):
            raise ValueError(
                f"execute_horizon must be in 1..action_horizon ({self.action_horizon}), got "
                f"{self.execute_horizon}"
            )

    def metadata(self) -> dict[str, Any]:
        """JSON/msgpack-friendly description, sent to clients on connect."""
        return {
            "name": self.name,
            "action_dim": self.action_dim,
            "action_horizon": self.action_horizon,
            "execute_horizon": self.execute_horizon or self.action_horizon,
            "control_hz": self.control_hz,
            **(
                {
                    "realtime": {
                        "method": self.realtime,
                        "prefix_field": ACTION_PREFIX,
                        "delay_field": ACTION_DELAY,
                        "max_delay": self.max_delay,
                    }
                }
                if self.realtime
                else {}
            ),
            "inputs": {
                s.name: {
                    "shape": list(s.shape),
                    "dtype": s.dtype,
                    "description": s.description,
                    **({"max_length": s.max_length} if s.dtype == "str" else {}),
                }
                for s in self.inputs
            },
        }

    def validate(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Check one observation (no batch axis) against the spec; returns it with arrays cast
        to their declared dtype. Raises :class:`ObservationError` naming the first bad field.
        Extra keys are ignored."""
        if not isinstance(obs, dict):
            raise ObservationError("<observation>", f"expected a dict, got {type(obs).__name__}")
        out = {}
        for s in self.inputs:
            if s.name not in obs:
                raise ObservationError(
                    s.name, f"missing; expected keys {sorted(i.name for i in self.inputs)}"
                )
            value = obs[s.name]
            if s.dtype == "str":
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if not isinstance(value, str):
                    raise ObservationError(s.name, f"expected a string, got {type(value).__name__}")
                # maxsplit: a 4 MB prompt of one-letter words is refused without splitting it
                if s.max_length and len(value.split(maxsplit=s.max_length)) > s.max_length:
                    n = len(value.split()) if len(value) <= 1 << 16 else f"more than {s.max_length}"
                    raise ObservationError(
                        s.name, f"{n} words, longer than the policy's context of {s.max_length}"
                    )
                out[s.name] = value
                continue
            out[s.name] = _as_array(s, value)
        if self.realtime and (ACTION_PREFIX in obs or ACTION_DELAY in obs):
            out.update(self._validate_prefix(obs))
        if SUBTASK in obs:
            sub = obs[SUBTASK]
            if isinstance(sub, bytes):
                sub = sub.decode("utf-8", errors="replace")
            if not isinstance(sub, str) or len(sub) > MAX_SUBTASK_CHARS:
                raise ObservationError(
                    SUBTASK,
                    f"expected the subtask text of the last reply (a string of at most "
                    f"{MAX_SUBTASK_CHARS} characters), got {type(sub).__name__}",
                )
            out[SUBTASK] = sub
        return out

    def _validate_prefix(self, obs: dict[str, Any]) -> dict[str, Any]:
        """The real-time chunking fields of one observation, checked (both or neither)."""
        for name in (ACTION_PREFIX, ACTION_DELAY):
            if name not in obs:
                other = ACTION_DELAY if name == ACTION_PREFIX else ACTION_PREFIX
                raise ObservationError(name, f"missing: {other} is sent, and needs it")
        raw = obs[ACTION_PREFIX]
        try:
            n = len(raw)
        except TypeError:
            raise ObservationError(
                ACTION_PREFIX, f"expected [L, {self.action_dim}] actions, got {type(raw).__name__}"
            ) from None
        if n > self.action_horizon:
            raise ObservationError(
                ACTION_PREFIX,
                f"{n} actions, more than the policy's chunk of {self.action_horizon}",
            )
        spec = InputSpec(ACTION_PREFIX, (n, self.action_dim), "float32", "committed actions")
        prefix = _as_array(spec, np.zeros((0, self.action_dim)) if n == 0 else raw)
        delay = obs[ACTION_DELAY]
        if (
            isinstance(delay, bool)
            or not isinstance(delay, (int, np.integer))
            or not 0 <= delay <= self.action_horizon
        ):
            raise ObservationError(
                ACTION_DELAY, f"expected an integer in 0..{self.action_horizon}, got {delay!r}"
            )
        return {ACTION_PREFIX: prefix, ACTION_DELAY: int(delay)}


def _as_array(s: InputSpec, value: Any) -> np.ndarray:
    """``value`` as an array of ``s``'s shape and dtype, or an :class:`ObservationError` naming
    ``s.name``. Finiteness is checked *after* the cast: a float64 1e300 is finite but becomes
    inf in float32, and must be refused here rather than poison the batch it would join."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, huge ints, ...
        raise ObservationError(
            s.name, f"cannot be read as a {s.dtype} array of shape {tuple(s.shape)} ({e})"
        ) from None
    # bool, str, bytes, object (None, dicts, huge ints), complex: none is a number we read
    if arr.dtype.kind not in "iuf":
        raise ObservationError(
            s.name, f"dtype {arr.dtype}, expected {s.dtype} numbers ({s.description})"
        )
    if arr.shape != tuple(s.shape):
        raise ObservationError(
            s.name, f"shape {arr.shape}, expected {tuple(s.shape)} ({s.description})"
        )
    want = np.dtype(s.dtype)
    if want == np.uint8 and arr.dtype != np.uint8:
        raise ObservationError(s.name, f"dtype {arr.dtype}, expected uint8 image")
    if want.kind in "iu":
        info = np.iinfo(want)
        if arr.dtype.kind not in "iu" or (
            arr.size and (arr.min() < info.min or arr.max() > info.max)
        ):
            raise ObservationError(
                s.name,
                f"dtype {arr.dtype}, expected {s.dtype} integers in [{info.min}, {info.max}]",
            )
        return arr.astype(want, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=False)
    if not np.all(np.isfinite(out)):
        raise ObservationError(
            s.name,
            f"contains NaN or infinity (as {s.dtype}, whose largest value is "
            f"{np.finfo(want).max:.3g})",
        )
    return out


def stack_batch(spec: PolicySpec, rows: list[dict[str, Any]]) -> Batch:
    """Rows (one observation each, already validated) -> one :data:`Batch` of ``spec``'s
    fields: arrays stacked on a new leading axis, strings as a list."""
    out: Batch = {}
    for s in spec.inputs:
        col = [r[s.name] for r in rows]
        out[s.name] = [str(v) for v in col] if s.dtype == "str" else np.stack(col)
    if spec.realtime and any(ACTION_PREFIX in r for r in rows):
        # committed prefixes padded to the horizon; rows without one have length 0
        h, a = spec.action_horizon, spec.action_dim
        prefix = np.zeros((len(rows), h, a), np.float32)
        length = np.zeros(len(rows), np.int32)
        delay = np.zeros(len(rows), np.int32)
        for i, r in enumerate(rows):
            if ACTION_PREFIX in r:
                p = np.asarray(r[ACTION_PREFIX], np.float32).reshape(-1, a)
                prefix[i, : len(p)], length[i], delay[i] = p, len(p), r[ACTION_DELAY]
        out[ACTION_PREFIX], out[PREFIX_LENGTH], out[ACTION_DELAY] = prefix, length, delay
    return out


def batch_size(obs: Batch) -> int:
    """Rows of a :data:`Batch` (the leading axis of its first field)."""
    for v in obs.values():
        return len(v)
    raise ValueError("empty observation batch: no fields")


def take_rows(obs: Batch, index) -> Batch:
    """Rows ``index`` (an int array) of every field of ``obs``."""
    index = np.asarray(index)
    return {
        k: [v[i] for i in index] if isinstance(v, list) else np.asarray(v)[index]
        for k, v in obs.items()
    }


@runtime_checkable
class Policy(Protocol):
    """The one policy protocol: everything that acts (a trained VLA, a CRL actor, a scripted
    controller, a RECAP policy with guidance, best-of-N) is one of these.

    * ``spec`` declares the observation fields it reads and the chunks it returns.
    * ``act(obs, key)`` maps a :data:`Batch` of ``B`` observations to a float32 array
      ``[B, action_horizon, action_dim]`` of actions in env units. ``key`` (a JAX PRNG key)
      is the only randomness: the same batch and key give the same chunks. Rollouts call
      this with a fixed batch size.
    * ``infer(rows)`` is the server's entry: a list of observation dicts (each passed through
      ``spec.validate``) -> the same array; it draws its own keys. :class:`ChunkPolicy`
      derives it from ``act``.

    Both may be slow (a network's forward pass): callers keep them off event loops.
    """

    spec: PolicySpec

    def act(self, obs: Batch, key: Any) -> np.ndarray: ...

    def infer(self, batch: list[dict[str, Any]]) -> np.ndarray: ...


class ChunkPolicy(abc.ABC):
    """Base class of policies: implement ``spec`` and ``act``; ``infer`` and ``warmup`` come
    from here. ``infer`` pads batches to the next power of two (so a jitted ``act`` compiles
    at most log2(max batch) shapes) and draws key ``fold_in(seed_key, call)``."""

    spec: PolicySpec
    #: pad ``infer`` batches to a power of two (compiled policies); False: act on them as is
    pad_batches: bool = True
    #: seed of the keys ``infer`` draws
    infer_seed: int = 0

    @abc.abstractmethod
    def act(self, obs: Batch, key: Any) -> np.ndarray:
        """``[B, action_horizon, action_dim]`` float32 chunks for a batch of observations."""

    def _next_key(self):
        import jax

        counter = self.__dict__.get("_infer_calls")
        if counter is None:
            counter = itertools.count(1)
            object.__setattr__(self, "_infer_calls", counter)  # frozen dataclasses too
        return jax.random.fold_in(jax.random.key(self.infer_seed), next(counter))

    def infer(self, batch: list[dict[str, Any]]) -> np.ndarray:
        n = len(batch)
        rows = list(batch)
        if self.pad_batches and n:
            rows += [rows[-1]] * ((1 << (n - 1).bit_length()) - n)
        out = self.act(stack_batch(self.spec, rows), self._next_key())
        return np.asarray(out, np.float32)[:n]

    def dummy_observation(self) -> dict[str, Any]:
        """One valid observation of zeros (and a short prompt), for warm-up and tests."""
        return {
            s.name: "warm up" if s.dtype == "str" else np.zeros(s.shape, np.dtype(s.dtype))
            for s in self.spec.inputs
        }

    def warmup(self, max_batch: int) -> None:
        """Compile every padded batch size up to ``max_batch`` (called by the server)."""
        dummy = self.dummy_observation()
        rows = [dummy]
        if self.spec.realtime:  # robots with real-time chunking send a committed prefix
            h, a = self.spec.action_horizon, self.spec.action_dim
            rows.append(
                {**dummy, ACTION_PREFIX: np.zeros((h // 2, a), np.float32), ACTION_DELAY: 1}
            )
        for row in rows:
            n = 1
            while True:
                self.infer([row] * n)
                if n >= max_batch or not self.pad_batches:
                    break
                n *= 2
