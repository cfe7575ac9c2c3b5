"""Test-time compute as policies around policies: RECAP's advantage conditioning with
classifier-free guidance, and best-of-N selection by a scorer.

Each wrapper is itself a :class:`~anyskill.policies.base.Policy` (a ``ChunkPolicy``: the
server pads and batches it like any other), so they compose::

    BestOfN(IndicatorConditioned(vla, "prompt", beta=2.0), ValueScorer(...), n=4)

Order matters: the scorer of :class:`BestOfN` sees the observations :class:`BestOfN` was
given, so put :class:`IndicatorConditioned` *inside* it — the value function then scores the
plain instruction, not the one with the indicator words (as the flywheel's selection does).

Nothing here imports JAX or an algorithm: the inner policy and the scorer bring their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from anyskill.policies.base import (
    ACTION_DELAY,
    ACTION_PREFIX,
    INDICATOR,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
    INDICATOR_TEXT,
    PREFIX_LENGTH,
    PROMPT,
    Batch,
    ChunkPolicy,
    Policy,
    PolicySpec,
    batch_size,
    prompt_with_indicator,
    take_rows,
)

#: how a policy is told "advantage: positive" (RECAP)
INDICATOR_KINDS = ("prompt", "input")


@runtime_checkable
class GuidedPolicy(Protocol):
    """A policy that can sample with classifier-free guidance between two inputs."""

    def act_guided(self, cond: Batch, uncond: Batch, beta: float, key: Any) -> np.ndarray:
        """``[B, H, A]`` chunks sampled with the guided velocity ``v_u + beta (v_c - v_u)``
        of the conditioned (``cond``) and unconditioned (``uncond``) observations, which
        hold the same rows (one draw of noise from ``key`` serves both)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Ranks candidate chunks: higher is better."""

    def score(self, obs: Batch, chunks: np.ndarray) -> np.ndarray:
        """``[B]`` scores of ``chunks`` ``[B, H, A]`` (env units), row ``i`` executed from
        observation row ``i`` of ``obs``."""
        ...


def _check_inner(inner: Any, who: str) -> None:
    if not isinstance(inner, Policy) or not isinstance(inner.spec, PolicySpec):
        raise TypeError(
            f"{who} wraps a Policy (a PolicySpec `spec`, `act` and `infer`), got {inner!r}"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class IndicatorConditioned(ChunkPolicy):
    """RECAP's policy at deployment: the inner policy asked for "advantage: positive".

    ``kind="prompt"``: the prompts get the indicator words appended (π*0.6); the spec's
    prompt ``max_length`` shrinks by those words, so a client's instruction still fits.
    ``kind="input"``: the batch's :data:`~anyskill.policies.base.INDICATOR` field is set to
    positive (a VLA with a learned indicator input reads it).

    ``beta == 1``: ``inner.act`` on the conditioned batch. ``beta != 1``: classifier-free
    guidance against the same batch without the indicator — ``inner`` must be a
    :class:`GuidedPolicy`."""

    inner: Policy
    """The policy trained with the indicator (dropped some of the time, for guidance)."""
    kind: Literal["prompt", "input"]
    """How the indicator reaches ``inner``: words of the prompt or the INDICATOR field."""
    beta: float = 1.0
    """Guidance weight: 1 plain conditioning; > 1 pushes further from the unconditioned
    policy (π*0.6's β)."""

    def __post_init__(self):
        _check_inner(self.inner, "IndicatorConditioned")
        if self.kind not in INDICATOR_KINDS:
            raise ValueError(
                f"IndicatorConditioned kind must be one of {INDICATOR_KINDS}, got {self.kind!r}"
            )
        if not (np.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"guidance beta must be a finite number >= 0, got {self.beta}")
        if self.beta != 1.0 and not isinstance(self.inner, GuidedPolicy):
            raise TypeError(
                f"beta={self.beta} needs classifier-free guidance, which "
                f"{self.inner.spec.name} ({type(self.inner).__name__}) does not implement "
                "(no act_guided); use beta=1 or a flow policy"
            )
        if self.kind == "input" and not getattr(self.inner, "accepts_indicator", False):
            raise ValueError(
                f"IndicatorConditioned(kind='input') needs a policy with an advantage-indicator "
                f"input (e.g. a VLA built with ModelConfig.indicator=True); "
                f"{self.inner.spec.name} ({type(self.inner).__name__}) has none. Use "
                "kind='prompt' for a policy trained with the indicator words in its prompt"
            )
        spec = self.inner.spec
        if self.kind == "prompt":
            words = len(INDICATOR_TEXT[True].split())
            inputs = []
            for s in spec.inputs:
                if s.name == PROMPT and s.max_length:
                    if s.max_length <= words:
                        raise ValueError(
                            f"{spec.name}: a prompt of at most {s.max_length} words leaves no "
                            f"room for the indicator's {words} words"
                        )
                    s = dataclasses.replace(s, max_length=s.max_length - words)
                inputs.append(s)
            if not any(s.name == PROMPT for s in inputs):
                raise ValueError(
                    f"IndicatorConditioned(kind='prompt') needs a policy that reads "
                    f"'{PROMPT}'; {spec.name} reads {[s.name for s in spec.inputs]}"
                )
            spec = dataclasses.replace(spec, inputs=tuple(inputs))
        if self.beta != 1.0:  # guided sampling does not continue a committed plan (yet)
            spec = dataclasses.replace(spec, realtime=None, max_delay=None)
        object.__setattr__(self, "spec", dataclasses.replace(spec, name=f"{spec.name}+recap"))
        object.__setattr__(self, "pad_batches", getattr(self.inner, "pad_batches", True))
        object.__setattr__(self, "infer_seed", getattr(self.inner, "infer_seed", 0))

    def split(self, obs: Batch) -> tuple[Batch, Batch]:
        """``(conditioned, unconditioned)`` batches: asked for "advantage: positive", and
        the same rows without any indicator."""
        n = batch_size(obs)
        if self.kind == "prompt":
            cond = {**obs, PROMPT: [prompt_with_indicator(str(p), True) for p in obs[PROMPT]]}
            return cond, obs
        # the other fields stay the same objects: a guided VLA encodes their prefix once
        cond = {**obs, INDICATOR: np.full(n, INDICATOR_POSITIVE, np.int32)}
        return cond, {**obs, INDICATOR: np.full(n, INDICATOR_NONE, np.int32)}

    def act(self, obs: Batch, key) -> np.ndarray:
        cond, uncond = self.split(obs)
        if self.beta == 1.0:
            return self.inner.act(cond, key)
        return self.inner.act_guided(cond, uncond, self.beta, key)


@dataclasses.dataclass(frozen=True, eq=False)
class BestOfN(ChunkPolicy):
    """Sample ``n`` chunks per observation from ``inner`` and return the one ``scorer``
    ranks highest (test-time selection; RECAP's value function ``Q(s, chunk)`` is one
    scorer). The ``n`` candidates of a row differ by their noise: ``inner`` acts once on the
    batch with every row repeated ``n`` times."""

    inner: Policy
    """The policy that proposes chunks (a stochastic one: a deterministic policy proposes
    ``n`` equal chunks)."""
    scorer: Scorer
    """``score(obs, chunks) -> [B*n]`` on the repeated observations."""
    n: int = 4
    """Candidates per observation."""

    def __post_init__(self):
        _check_inner(self.inner, "BestOfN")
        if not isinstance(self.scorer, Scorer):
            raise TypeError(
                f"BestOfN scorer must have score(obs, chunks) -> [B] scores, got {self.scorer!r}"
            )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"BestOfN n must be an integer >= 1, got {self.n!r}")
        spec = self.inner.spec
        object.__setattr__(
            self, "spec", dataclasses.replace(spec, name=f"{spec.name}+best-of-{self.n}")
        )
        object.__setattr__(self, "pad_batches", getattr(self.inner, "pad_batches", True))
        object.__setattr__(self, "infer_seed", getattr(self.inner, "infer_seed", 0))

    def act(self, obs: Batch, key) -> np.ndarray:
        b, n = batch_size(obs), self.n
        tiled = take_rows(obs, np.repeat(np.arange(b), n))  # row i -> rows i*n .. i*n+n-1
        chunks = np.asarray(self.inner.act(tiled, key), np.float32)  # [B*n, H, A]
        scores = np.asarray(self.scorer.score(tiled, chunks))
        if scores.shape != (b * n,):
            raise ValueError(
                f"BestOfN: the scorer returned scores of shape {scores.shape}, expected "
                f"({b * n},) (one per candidate)"
            )
        best = np.argmax(scores.reshape(b, n), axis=1)
        return chunks.reshape(b, n, *chunks.shape[1:])[np.arange(b), best]


class SimulatedDelay(ChunkPolicy):
    """``inner`` as the robot runtime executes it when each chunk arrives ``delay`` control
    steps after its observation: a deterministic, batched, in-process stand-in for a
    network (``rollout(env, SimulatedDelay(p, d), key, replan_every=wrapper.period)``).

    The runtime asks for the next chunk so that it arrives as the current one's execute
    horizon E ends, and at once when the delay is longer: one chunk per ``period`` =
    ``max(delay, E - delay)`` steps. Call k (observation of step t_k) returns the actions of
    steps t_k .. t_k + period - 1: the previous chunk's ``[period, period + delay)`` while the
    new one is computed, then the new one's from index ``delay``. With ``realtime`` the
    request carries the rest of the previous chunk and the delay (real-time chunking), as
    :class:`~anyskill.serve.runtime.ChunkRuntime` sends them. The first call of a rollout
    (or any call with another batch size) has no previous chunk: its chunk is used from
    index 0 (the runtime waits for the first chunk of an episode). Use a new wrapper per
    rollout, one wave (``parallel`` = all envs)."""

    pad_batches = False

    def __init__(self, inner: Policy, delay: int, realtime: bool = False):
        _check_inner(inner, "SimulatedDelay")
        spec = inner.spec
        e = spec.execute_horizon or spec.action_horizon
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.period = max(delay, e - delay, 1) if delay else e
        if delay + self.period > spec.action_horizon:
            raise ValueError(
                f"a delay of {delay} steps needs chunks of at least {delay + self.period} "
                f"actions ({spec.name} has {spec.action_horizon}): the robot would run out"
            )
        if realtime and not spec.realtime:
            raise ValueError(f"{spec.name} does not announce real-time chunking")
        self.inner, self.delay, self.realtime, self.spec = inner, delay, realtime, spec
        self.infer_seed = getattr(inner, "infer_seed", 0)
        self._prev: np.ndarray | None = None

    def act(self, obs: Batch, key) -> np.ndarray:
        b, d, p = batch_size(obs), self.delay, self.period
        prev = self._prev if self._prev is not None and len(self._prev) == b else None
        if prev is not None and self.realtime:
            h = prev.shape[1]
            prefix = np.zeros_like(prev)
            prefix[:, : h - p] = prev[:, p:]
            obs = {
                **obs,
                ACTION_PREFIX: prefix,
                PREFIX_LENGTH: np.full(b, h - p, np.int32),
                ACTION_DELAY: np.full(b, d, np.int32),
            }
        chunk = np.asarray(self.inner.act(obs, key), np.float32)
        self._prev = chunk
        if prev is None or d == 0:
            return chunk
        # steps t_k .. t_k + d - 1 still run the previous plan; the new chunk from index d
        return np.concatenate([prev[:, p : p + d], chunk[:, d:]], axis=1)


class HotSwap:
    """A served policy whose weights change while it serves: ``swap(new)`` replaces the
    inner policy between two forward passes (a request never sees half of each). The fleet's
    robot workers serve one of these and swap in each newly published version.

    ``new`` must act like the policy it replaces: the same spec (the server announced it to
    the robots when they connected)."""

    def __init__(self, inner: Policy, version: int = 0):
        _check_inner(inner, "HotSwap")
        import threading

        self._inner, self.version = inner, int(version)
        self._lock = threading.Lock()

    @property
    def spec(self) -> PolicySpec:
        return self._inner.spec

    @property
    def inner(self) -> Policy:
        return self._inner

    def swap(self, new: Policy, version: int) -> None:
        _check_inner(new, "HotSwap")
        if new.spec != self._inner.spec:
            raise ValueError(
                f"HotSwap: the new policy's spec differs from the served one "
                f"({new.spec.name!r} vs {self._inner.spec.name!r}); robots connected to the "
                "old one would send the wrong inputs — serve it with a new server instead"
            )
        with self._lock:
            self._inner, self.version = new, int(version)

    def act(self, obs: Batch, key: Any) -> np.ndarray:
        with self._lock:
            return self._inner.act(obs, key)

    def infer(self, batch: list[dict[str, Any]]) -> np.ndarray:
        with self._lock:
            return self._inner.infer(batch)

    def infer_subtasks(self, batch: list[dict[str, Any]]) -> tuple[np.ndarray, list | None]:
        """The server's entry: a hierarchical inner policy's chunks and subtask texts; any
        other's chunks and None."""
        with self._lock:
            hier = getattr(self._inner, "infer_subtasks", None)
            return hier(batch) if callable(hier) else (self._inner.infer(batch), None)

    def warmup(self, max_batch: int) -> None:
        with self._lock:
            warm = getattr(self._inner, "warmup", None)
            if warm is not None:
                warm(max_batch)
