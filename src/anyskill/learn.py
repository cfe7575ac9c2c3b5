"""The one gradient-step loop shared by every supervised fit: the VLA's ``train``, the
flywheel's policy fine-tuning and the value function's fit.

A fit is ``state, metrics = step_fn(state, batch)`` repeated on ``next_batch()``; what differs
between callers (evaluation, checkpoints, a time budget, the loss history) happens between
steps, so :func:`train_steps` yields after every step and the caller does it there (or stops
iterating). :func:`fit` is the loop without anything in between.

The loop adds nothing to the numerics: the same ``step_fn`` on the same batches in the same
order gives bit-identical results however it is driven.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

State = TypeVar("State")
Batch = TypeVar("Batch")
Metrics = TypeVar("Metrics")

StepFn = Callable[[State, Batch], tuple[State, Metrics]]


def train_steps(
    step_fn: StepFn,
    state: State,
    next_batch: Callable[[], Batch],
    steps: int,
    start: int = 0,
    progress: Callable[[int], Any] | None = None,
) -> Iterator[tuple[int, State, Metrics]]:
    """Run ``step_fn`` from step ``start`` up to ``steps``, yielding ``(step, state, metrics)``
    after each update (``step`` counts updates done, 1-based). ``progress(1)`` is called after
    every step (e.g. a tqdm bar's ``update``). Nothing runs when ``start >= steps``."""
    for step in range(start + 1, steps + 1):
        state, metrics = step_fn(state, next_batch())
        if progress is not None:
            progress(1)
        yield step, state, metrics


def fit(
    step_fn: StepFn,
    state: State,
    next_batch: Callable[[], Batch],
    steps: int,
    progress: Callable[[int], Any] | None = None,
) -> tuple[State, list[Metrics]]:
    """``steps`` updates of ``state``; returns the last state and every step's metrics."""
    history: list = []
    final = state
    for _, after, metrics in train_steps(step_fn, state, next_batch, steps, progress=progress):
        final = after
        history.append(metrics)
    return final, history
