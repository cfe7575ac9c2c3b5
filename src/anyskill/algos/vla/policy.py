"""A trained VLA (or baseline) run as a deployable :class:`~anyskill.policies.base.Policy`."""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.data import model_inputs, policy_inputs
from anyskill.algos.vla.model import MAX_GUIDANCE, Obs, PolicyModel
from anyskill.algos.vla.train import chunk_fn_for, load_run
from anyskill.policies.base import (
    ACTION_DELAY,
    ACTION_PREFIX,
    INDICATOR,
    INDICATOR_NEGATIVE,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
    PREFIX_LENGTH,
    PROMPT,
    STATE,
    SUBTASK,
    Batch,
    ChunkPolicy,
    ObservationError,
    PolicySpec,
    stack_batch,
)
from anyskill.policies.registry import read_config_json, register_loader


class VLAPolicy(ChunkPolicy):
    """``infer(batch)`` -> ``[B, H, A]`` action chunks in env units, from raw observations:
    ``observation/state`` float32 ``[state_dim]``, one uint8 ``[H, W, 3]`` image per camera
    of the training data (the first as ``observation/image``, the others under their
    feature names, e.g. ``observation.images.wrist``; any size, resized to the model's),
    ``prompt`` str."""

    def __init__(
        self,
        run_dir: Path | str,
        num_steps: int | None = None,
        seed: int = 0,
        realtime_guidance: float = MAX_GUIDANCE,
        realtime_mask: str = "hard",
        subtasks: str | None = None,
        subtask_margin: float = 0.2,
    ):
        """``realtime_guidance``, ``realtime_mask``: how a committed plan is inpainted (real-
        time chunking, guided models). ``hard`` (default): only the actions that execute
        before the chunk arrives are guided; ``soft``: decaying weights over the whole
        overlap with the plan too (Black et al.'s mask) — smoother joins, but it holds the
        policy to its older plans: on push with a 2-step execute horizon it cut success
        from 0.91 to 0.48 at a 1-step delay (BENCHMARKS.md, "Real-time chunking").

        ``subtasks`` (a model trained with ``--model.subtasks``): where each chunk's subtask
        comes from — ``predicted`` (the subtask head, the default for such a model),
        ``oracle`` (from the observed scene) or ``none`` (the instruction itself); a flat
        model takes only ``none``. ``subtask_margin``: the hysteresis margin (see
        :mod:`anyskill.algos.vla.subtasks`)."""
        if realtime_mask not in ("soft", "hard"):
            raise ValueError(f"realtime_mask must be 'soft' or 'hard', got {realtime_mask!r}")
        if not realtime_guidance >= 0:
            raise ValueError(f"realtime_guidance must be >= 0, got {realtime_guidance}")
        self.realtime_guidance, self.realtime_soft = realtime_guidance, realtime_mask == "soft"
        cfg, model, normalizer, params, meta = load_run(Path(run_dir))
        self.cfg, self.model, self.params, self.meta = cfg, model, params, meta
        self.normalizer, self.num_steps = normalizer, num_steps
        m = cfg.model
        self.image_size = m.image_size
        self.spec = PolicySpec(
            # the run's real inputs: its data's state size, cameras and the instruction
            policy_inputs(m),
            action_dim=m.action_dim,
            action_horizon=m.horizon,
            control_hz=10.0,
            name=f"anyskill-{m.arch}",
            # trained (and evaluated) replanning every `replan_every` actions; executing the
            # whole chunk open loop succeeds far less often (issue 22)
            execute_horizon=min(cfg.replan_every, m.horizon),
            # real-time chunking: continue the robot's committed actions (issue 25)
            realtime=None if m.arch == "mlp-bc" else ("trained" if m.max_delay else "guided"),
            max_delay=m.max_delay or None,
        )
        self._fn = jax.jit(chunk_fn_for(model, normalizer, num_steps))
        self.infer_seed = seed
        self.selector = None
        mode = subtasks or ("predicted" if m.subtasks else "none")
        if m.subtasks or mode != "none":
            from anyskill.algos.vla.subtasks import SubtaskSelector

            self.selector = SubtaskSelector(model, normalizer, mode, subtask_margin)
            self.spec = dataclasses.replace(self.spec, name=f"anyskill-{m.arch}-{mode}-subtasks")

    # ---- high-level inference (issue 27) --------------------------------------------------

    def start_episodes(self, n: int | None = None) -> None:
        """New episodes in every row (the rollout calls this at each wave's start): the
        hierarchical policy forgets each row's current subtask."""
        if self.selector is not None:
            self.selector.start_episodes(n)

    def _lowered(self, obs: Batch, current=None):
        """``(model inputs, subtask texts or None)``: with a subtask head, the prompt is
        each row's subtask's text."""
        model_obs = self.model_obs(obs)
        if self.selector is None:
            return model_obs, None
        low, _, texts = self.selector.lower(
            self.params, obs[STATE], obs[PROMPT], model_obs, current
        )
        return low, texts

    def infer_subtasks(self, batch: list[dict]) -> tuple[np.ndarray, list[str] | None]:
        """The server's entry for a hierarchical policy: ``(chunks [B, H, A], subtask text
        per row)`` (None for a flat model). A row may carry the :data:`SUBTASK` its client
        was last sent; its hysteresis then starts from it (no per-client state here)."""
        if self.selector is None:
            return self.infer(batch), None
        n = len(batch)
        rows = list(batch)
        if self.pad_batches and n:
            rows += [rows[-1]] * ((1 << (n - 1).bit_length()) - n)
        obs = stack_batch(self.spec, rows)
        echoed = [r.get(SUBTASK, "") for r in rows]
        current = self.selector.classes_of(obs[STATE], obs[PROMPT], echoed)
        chunks, texts = self._act(obs, self._next_key(), current)
        return np.asarray(chunks, np.float32)[:n], list(texts)[:n]

    def to_obs(self, obs: Batch) -> Obs:
        """Model inputs of a :data:`Batch` (:func:`~anyskill.algos.vla.data.model_inputs`):
        each camera resized to the model's size, prompts tokenized; a field that does not fit
        the run raises :class:`ObservationError` naming it."""
        return model_inputs(self.cfg.model, obs)

    def act(self, obs: Batch, key) -> np.ndarray:
        """``[B, H, A]`` chunks in env units (no padding: a rollout's fixed batch compiles
        once; the server's ``infer`` pads to powers of two). With real-time chunking fields
        (:data:`~anyskill.policies.base.ACTION_PREFIX`, from a robot runtime), the chunks
        continue each row's committed actions (:meth:`PolicyModel.sample_realtime`)."""
        return self._act(obs, key)[0]

    def _act(self, obs: Batch, key, current=None) -> tuple[np.ndarray, list[str] | None]:
        model_obs, texts = self._lowered(obs, current)
        if ACTION_PREFIX in obs and self.spec.realtime:
            out = self._realtime(
                self.params,
                key,
                model_obs,
                jnp.asarray(obs[ACTION_PREFIX], jnp.float32),
                jnp.asarray(obs[PREFIX_LENGTH], jnp.int32),
                jnp.asarray(obs[ACTION_DELAY], jnp.int32),
            )
            return np.asarray(out, np.float32), texts
        return np.asarray(self._fn(self.params, key, model_obs), np.float32), texts

    @functools.cached_property
    def _realtime(self):
        model, normalizer, num_steps = self.model, self.normalizer, self.num_steps
        beta, soft = self.realtime_guidance, self.realtime_soft

        def realtime(params, key, obs: Obs, prefix, length, delay):
            obs = obs.replace(state=normalizer.state(obs.state))
            chunk = model.sample_realtime(
                params, key, obs, normalizer.action(prefix), length, delay, num_steps, beta, soft
            )
            return normalizer.unaction(chunk)

        return jax.jit(realtime)

    # ---- RECAP: the advantage indicator and classifier-free guidance ----------------------

    @property
    def accepts_indicator(self) -> bool:
        """The model reads the :data:`~anyskill.policies.base.INDICATOR` field (a VLA built
        with ``ModelConfig.indicator=True``)."""
        return bool(self.model.cfg.indicator)

    def model_obs(self, obs: Batch) -> Obs:
        """:meth:`to_obs` plus the advantage indicator when ``obs`` has an
        :data:`~anyskill.policies.base.INDICATOR` field (``[B]`` ints: 0 none, 1 positive,
        2 negative)."""
        out = self.to_obs(obs)
        if INDICATOR not in obs:
            return out
        if not self.accepts_indicator:
            raise ObservationError(
                INDICATOR,
                f"{self.spec.name} has no advantage-indicator input (ModelConfig.indicator="
                "False); condition it through the prompt instead",
            )
        ind = np.asarray(obs[INDICATOR])
        n = out.state.shape[0]
        valid = (INDICATOR_NONE, INDICATOR_POSITIVE, INDICATOR_NEGATIVE)
        if ind.shape != (n,) or ind.dtype.kind not in "iu" or not np.isin(ind, valid).all():
            raise ObservationError(
                INDICATOR, f"expected {n} integers in {valid}, got {ind.dtype} {ind.shape}"
            )
        return out.replace(indicator=jnp.asarray(ind, jnp.int32))

    def act_guided(self, cond: Batch, uncond: Batch, beta: float, key) -> np.ndarray:
        """Classifier-free guidance (:meth:`PolicyModel.sample_guided`): ``[B, H, A]``
        chunks in env units from the velocity ``v_u + beta (v_c - v_u)`` of ``cond`` and
        ``uncond``. When the two batches differ only in their indicator (the same field
        objects otherwise), one prefix encoding serves both."""
        shared = set(cond) == set(uncond) and all(
            k == INDICATOR or cond[k] is uncond[k] for k in cond
        )
        c = self.model_obs(cond)
        u = self.model_obs(uncond)
        if shared:
            u = u.indicator  # the rest of the prefix is c's, inside the jit
        out = self._guided(self.params, key, c, u, beta=float(beta), shared=shared)
        return np.asarray(out, np.float32)

    @functools.cached_property
    def _guided(self):
        model, normalizer, num_steps = self.model, self.normalizer, self.num_steps

        def guided(params, key, cond: Obs, uncond, beta: float, shared: bool):
            # as the flywheel's chunk_fn: normalise, guide, back to env units
            cond = cond.replace(state=normalizer.state(cond.state))
            if shared:
                uncond = cond.replace(indicator=uncond)
            else:
                uncond = uncond.replace(state=normalizer.state(uncond.state))
            chunk = model.sample_guided(params, key, cond, uncond, beta, num_steps)
            return normalizer.unaction(chunk)

        return jax.jit(guided, static_argnames=("beta", "shared"))

    def with_weights(self, params, model: PolicyModel | None = None, name: str | None = None):
        """This policy (same inputs, normaliser and spec) with other weights ``params`` of
        ``model`` (default: this policy's model; another must read the same inputs and
        return the same chunks, e.g. the same VLA with an indicator input). ``name``: the
        new spec's name."""
        new = copy.copy(self)
        for k in (
            "_infer_calls",
            "_guided",
            "_realtime",
        ):  # per-policy key counter and compiled functions
            new.__dict__.pop(k, None)
        new.params = params
        if self.selector is not None:
            new.selector = self.selector.copy()
        if model is not None:
            new.model = model
            new.cfg = dataclasses.replace(self.cfg, model=model.cfg)
            new._fn = jax.jit(chunk_fn_for(model, self.normalizer, self.num_steps))
        if name is not None:
            new.spec = dataclasses.replace(self.spec, name=name)
        return new


def is_policy_run(path: Path) -> bool:
    """A run directory of ``anyskill train policy``: its ``config.json`` names a model
    ``arch`` and the data it was trained on (a flywheel's config has a model but no data)."""
    d = read_config_json(path)
    return (
        d is not None and isinstance(d.get("model"), dict) and "arch" in d["model"] and "data" in d
    )


register_loader(
    "policy run (anyskill train policy: vla, mlp-bc, mlp-flow)",
    is_policy_run,
    VLAPolicy,
    options=(
        "num_steps",
        "seed",
        "realtime_guidance",
        "realtime_mask",
        "subtasks",
        "subtask_margin",
    ),
)


def with_object_slots(policy: VLAPolicy, env) -> VLAPolicy:
    """``policy`` (a VLA trained on tabletop data with entity tokens) reading ``env``'s wider
    tabletop observation (more object slots than its data had: sort with more objects than
    any training episode). The model's entity tokens are per kind (one projection for every
    object slot), so the extra slots are read by the same weights; each gets the position
    embedding of the last trained object slot, and the normaliser the last slot's
    statistics. The subtask head's pointer gets one class per slot."""
    from anyskill.algos.vla.subtasks import tabletop_slots
    from anyskill.envs.tabletop.subtasks import _SLOT, num_objects_of

    m = policy.cfg.model
    have = num_objects_of(m.state_dim) if m.state_dim > 12 else 0
    want = env.num_objects
    if not m.state_tokens or have == 0:
        raise ValueError(
            f"{policy.spec.name}: only a VLA with tabletop entity tokens can read more object "
            "slots than it was trained on"
        )
    if want == have:
        return policy
    if want < have:
        raise ValueError(f"the run reads {have} object slots; the env has {want} (fewer)")
    tokens, words = env.state_tokens(), env.state_token_words()
    # rows of the entity tokens: pusher, objects 0..have-1, zones; new objects copy the last
    obj_rows = [j for j, (_, _, k) in enumerate(m.state_tokens) if k == 1]
    order = (
        list(range(obj_rows[0]))
        + obj_rows
        + [obj_rows[-1]] * (want - have)
        + list(range(obj_rows[-1] + 1, len(m.state_tokens)))
    )

    def widen(tree):
        tree = dict(tree)
        for k, v in tree.items():
            if k == "entity_pos":
                tree[k] = jnp.asarray(v)[jnp.asarray(order)]
            elif isinstance(v, dict):
                tree[k] = widen(v)
        return tree

    n = policy.normalizer
    last = slice(4 + _SLOT * (have - 1), 4 + _SLOT * have)

    def stat(x):
        x = np.asarray(x)
        head, objs, zones = x[:4], x[4 : 4 + _SLOT * have], x[4 + _SLOT * have :]
        return jnp.asarray(np.concatenate([head, objs] + [x[last]] * (want - have) + [zones]))

    normalizer = dataclasses.replace(n, state_mean=stat(n.state_mean), state_std=stat(n.state_std))
    wider = dataclasses.replace(
        m,
        state_dim=env.obs_dim,
        state_tokens=tokens,
        state_token_words=words,
        subtask_slots=tabletop_slots(tokens, env.obs_dim) if m.subtasks else (),
    )
    model = PolicyModel(wider)
    new = policy.with_weights(widen(policy.params), model)
    new.normalizer = normalizer
    new.cfg = dataclasses.replace(policy.cfg, model=wider)
    new.spec = dataclasses.replace(policy.spec, inputs=policy_inputs(wider))
    new._fn = jax.jit(chunk_fn_for(model, normalizer, policy.num_steps))
    if policy.selector is not None:
        from anyskill.algos.vla.subtasks import SubtaskSelector

        sel = policy.selector
        new.selector = SubtaskSelector(model, normalizer, sel.mode, sel.margin)
    return new
