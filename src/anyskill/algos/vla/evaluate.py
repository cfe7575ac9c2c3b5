"""Closed-loop evaluation of a chunking policy in the built-in tabletop simulator.

Every env renders its camera, the policy samples an action chunk, the first ``replan_every``
actions are executed, and so on; success is the instruction's predicate at the end of each
env's first episode. The loop is :func:`anyskill.rollout.rollout`; this module adds the
per-family success table (:class:`Evaluator`), captioned videos (:func:`rollout_video`), and
:class:`ChunkFnPolicy`, which turns a model's chunk function ``fn(params, key, Obs)`` into a
:class:`~anyskill.policies.base.Policy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.data import model_inputs, policy_inputs
from anyskill.algos.vla.model import Obs
from anyskill.envs.tabletop.env import Tabletop
from anyskill.policies.base import PROMPT, STATE, Batch, ChunkPolicy, PolicySpec
from anyskill.rollout import JaxBatchEnv, rollout

#: ``chunk_fn(params, key, obs) -> [B, H, A]`` actions in env units; ``obs.state`` is the raw
#: env observation (the policy normalizes it), the other fields are model inputs.
ChunkFn = Callable[[Any, jax.Array, Obs], jax.Array]


class ChunkFnPolicy(ChunkPolicy):
    """A chunk function ``fn(params, key, Obs) -> [B, H, A]`` (env units, raw state in) with
    its weights, as a :class:`~anyskill.policies.base.Policy` reading ``observation/state``,
    ``observation/image`` (when ``m.num_cameras``) and ``prompt``.

    ``prompt_suffix`` is appended to every prompt before tokenizing (RECAP's indicator words
    in the flywheel). :meth:`with_params` gives the same policy with other weights, sharing
    the compiled function (an evaluation during training does not recompile)."""

    def __init__(
        self,
        chunk_fn: ChunkFn,
        params: Any,
        m: ModelConfig,
        *,
        prompt_suffix: str = "",
        execute_horizon: int | None = None,
        control_hz: float = 10.0,
        name: str | None = None,
        selector=None,
    ):
        """``selector``: a :class:`~anyskill.algos.vla.subtasks.SubtaskSelector` (a model
        with a subtask head): each chunk's prompt becomes the selected subtask's text."""
        self.params, self.m, self.prompt_suffix = params, m, prompt_suffix
        self.selector = selector
        self.spec = PolicySpec(
            policy_inputs(m, len(prompt_suffix.split())),
            action_dim=m.action_dim,
            action_horizon=m.horizon,
            control_hz=control_hz,
            name=name or f"anyskill-{m.arch}",
            execute_horizon=execute_horizon,
        )
        self._fn = jax.jit(chunk_fn)

    def with_params(self, params: Any) -> ChunkFnPolicy:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.pop("_infer_calls", None)
        new.params = params
        if self.selector is not None:
            new.selector = self.selector.copy()
        return new

    def start_episodes(self, n: int | None = None) -> None:
        if self.selector is not None:
            self.selector.start_episodes(n)

    def to_obs(self, obs: Batch) -> Obs:
        """The model's inputs (:func:`~anyskill.algos.vla.data.model_inputs`)."""
        return model_inputs(self.m, obs, self.prompt_suffix)

    def act(self, obs: Batch, key) -> np.ndarray:
        model_obs = self.to_obs(obs)
        if self.selector is not None:
            model_obs, _, _ = self.selector.lower(
                self.params, obs[STATE], obs[PROMPT], model_obs, suffix=self.prompt_suffix
            )
        return np.asarray(self._fn(self.params, key, model_obs), np.float32)


def rollout_video(
    env: Tabletop,
    policy: Any,
    key: jax.Array,
    path,
    *,
    episodes: int,
    replan_every: int | None = None,
    size: int = 128,
) -> dict:
    """Write a video of ``episodes`` closed-loop episodes of ``policy`` side by side, each
    captioned with its instruction (green once fulfilled) or, for a hierarchical policy
    (one with a subtask ``selector``) while a subtask other than the task itself is active,
    "now: <subtask>"; returns ``{path,
    instructions, success}``."""
    from anyskill.envs.render import save_video, tile_frames
    from anyskill.envs.video import caption_frame

    selector = getattr(policy, "selector", None)
    if selector is not None:
        selector.texts.clear()
    ep = rollout(env, policy, key, num_envs=episodes, replan_every=replan_every, record_images=size)
    every = replan_every or policy.spec.execute_horizon or policy.spec.action_horizon
    subtask = selector.texts if selector is not None else []

    def caption(i: int, t: int) -> str:
        c = t // every
        if c < len(subtask) and subtask[c][i] != ep.task[i]:
            return f"now: {subtask[c][i]}"  # three caption lines hold one sentence
        return ep.task[i]

    clips = []
    for i in range(episodes):
        n, text = int(ep.length[i]), ep.task[i]
        clip = [caption_frame(ep.images[i, t], caption(i, t), False, size // 6) for t in range(n)]
        # hold the last frame a second, captioned with the outcome
        clip += [caption_frame(ep.images[i, n - 1], text, bool(ep.success[i]), size // 6)] * 10
        clips.append(np.stack(clip))
    out = save_video(tile_frames(clips, cols=min(4, episodes)), path, fps=float(env.control_hz))
    return {"path": str(out), "instructions": list(ep.task), "success": ep.success.tolist()}


@dataclasses.dataclass
class Evaluator:
    """Success per ``split/family`` of a policy; the envs' programs are compiled once per
    split and reused for every evaluation of a run."""

    env: Tabletop
    splits: tuple[str, ...]
    episodes_per_family: int
    replan_every: int | None = None
    """Actions executed per chunk (default: the policy's ``execute_horizon``); at most the
    policy's chunk length, as a served VLA's ``execute_horizon``."""

    def __post_init__(self):
        if self.episodes_per_family < 1:  # no episodes: every success rate would be NaN
            raise ValueError(
                f"episodes per task family must be >= 1, got {self.episodes_per_family}"
            )
        self._envs = {s: JaxBatchEnv(dataclasses.replace(self.env, split=s)) for s in self.splits}

    def __call__(self, policy: Any, key: jax.Array) -> dict[str, float]:
        n = self.episodes_per_family * len(self.env.families)
        out = {}
        r = self.replan_every and min(self.replan_every, policy.spec.action_horizon)
        selector = getattr(policy, "selector", None)
        every = r or policy.spec.execute_horizon or policy.spec.action_horizon
        for i, (split, benv) in enumerate(self._envs.items()):
            if selector is not None:
                selector.log.clear()
            ep = rollout(benv, policy, jax.random.fold_in(key, i), num_envs=n, replan_every=r)
            family = np.asarray(ep.family)
            acc = None if selector is None else selector.accuracy(ep.length, every)
            rates = []
            for f in self.env.families:
                sel = family == f
                if sel.any():
                    out[f"{split}/{f}"] = float(ep.success[sel].mean())
                    rates.append(out[f"{split}/{f}"])
                    if acc is not None and np.isfinite(acc[sel]).any():
                        # share of chunk boundaries whose subtask was the oracle's
                        out[f"subtask_acc.{split}.{f}"] = float(np.nanmean(acc[sel]))
            out[f"{split}/mean"] = float(np.mean(rates)) if rates else float("nan")
        return out
