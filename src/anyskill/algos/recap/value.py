"""The flywheel's value function: distributional, across tasks, sharing the policy's encoder.

``V(s)`` predicts the normalised value of a state — ``-(steps to success) / horizon`` in
``[-1, 0]``, failures at ``-1`` (see :mod:`anyskill.algos.recap.advantage`) — as a categorical
distribution over :data:`~anyskill.algos.recap.advantage.NUM_BINS` bins, trained by cross-entropy
on Monte-Carlo targets. The same network also reads an optional action chunk: with it, it
predicts ``Q(s, a_chunk)`` (the value of the state when the behaviour continued with that
chunk), which test-time selection uses to rank sampled chunks; training hides the chunk half
of the time so one network learns both.

The encoder is the policy's: for a VLA its prefix (images, instruction, state tokens), for
the MLP policies their pooled patch and word embeddings; the policy's weights initialise it
(π*0.6 initialises its value model from the same backbone).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from anyskill.algos.recap.advantage import NUM_BINS, bin_centers, to_bins
from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.model import VLA, Obs, PolicyModel
from anyskill.learn import fit
from anyskill.nets.transformer import VOCAB, PatchEncoder


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    """Value-function training."""

    steps: int = 1500
    """Gradient steps the first time (pretraining on everything collected so far)."""
    finetune_steps: int = 500
    """Gradient steps in later rounds, continuing from the previous round's weights."""
    batch_size: int = 128
    """Frames per gradient step."""
    lr: float = 3e-4
    """AdamW learning rate (constant after a 100-step warmup)."""
    hidden: int = 256
    """Width of the value head."""
    chunk_dropout: float = 0.5
    """Fraction of training samples whose action chunk is hidden (learns V as well as Q)."""

    def __post_init__(self):
        for name in ("steps", "finetune_steps", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"value {name} must be >= 1, got {getattr(self, name)} "
                    f"(--value.{name.replace('_', '-')} takes a positive count)"
                )
        if not self.lr >= 0:  # also refuses NaN
            raise ValueError(f"value lr must be >= 0, got {self.lr}")
        if not 0 <= self.chunk_dropout <= 1:
            raise ValueError(f"value chunk_dropout must be in [0, 1], got {self.chunk_dropout}")


class ValueNet(nn.Module):
    """Logits ``[B, NUM_BINS]`` of ``V(s)`` (``chunk=None``) or ``Q(s, chunk)``."""

    cfg: ModelConfig
    hidden: int = 256
    num_bins: int = NUM_BINS

    @nn.compact
    def __call__(self, obs: Obs, chunk: jax.Array | None = None, has_chunk=None):
        c = self.cfg
        if c.arch == "vla":
            _, mask, feats = VLA(c, name="encoder").encode(obs)
            m = mask[..., None].astype(jnp.float32)
            pooled = (feats * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        else:  # the MLP policies' encoders: pooled patch and word embeddings, the state
            parts = [
                PatchEncoder(c.width, c.patch_size, name=f"camera{i}")(obs.images[:, i]).mean(1)
                for i in range(c.num_cameras)
            ]
            emb = nn.Embed(VOCAB, c.width, name="Embed_0")(obs.tokens)
            m = obs.text_mask[..., None].astype(jnp.float32)
            parts += [(emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0), obs.state]
            pooled = jnp.concatenate(parts, axis=-1)
        b = pooled.shape[0]
        if chunk is None:
            c = jnp.zeros((b, self.hidden))
            flag = jnp.zeros((b, 1))
        else:
            flag = jnp.ones((b, 1)) if has_chunk is None else has_chunk[:, None].astype(jnp.float32)
            c = nn.Dense(self.hidden, name="chunk_in")(chunk.reshape(b, -1)) * flag
        h = jnp.concatenate([pooled, c, flag], axis=-1)
        for i in range(2):
            h = nn.swish(nn.LayerNorm(name=f"norm{i}")(nn.Dense(self.hidden, name=f"hidden{i}")(h)))
        return nn.Dense(self.num_bins, name="logits")(h)


def graft(dst, src):
    """``dst`` with every leaf that ``src`` has at the same path and shape taken from ``src``."""
    if isinstance(dst, dict):
        return {
            k: graft(v, src[k]) if isinstance(src, dict) and k in src else v for k, v in dst.items()
        }
    if hasattr(src, "shape") and src.shape == dst.shape:
        return src
    return dst


#: compiled train steps per ValueFunction (a frozen dataclass, so hashable by its configs)
_train_steps: dict = {}


@dataclasses.dataclass(frozen=True)
class ValueFunction:
    """``init``, ``train`` and ``predict`` of a :class:`ValueNet` for one policy config."""

    policy_cfg: ModelConfig
    cfg: ValueConfig = ValueConfig()

    @property
    def net(self) -> ValueNet:
        return ValueNet(self.policy_cfg, self.cfg.hidden)

    def init(self, key, policy_params=None) -> Any:
        c = self.policy_cfg
        chunk = jnp.zeros((2, c.horizon, c.action_dim))
        params = self.net.init(key, PolicyModel(c).fake_obs(), chunk)
        if policy_params is not None and c.arch == "vla":
            enc = graft(params["params"]["encoder"], policy_params["params"])
            params = {"params": {**params["params"], "encoder": enc}}
        elif policy_params is not None:
            params = {"params": graft(params["params"], policy_params["params"])}
        return params

    def expected(self, params, obs: Obs, chunk=None) -> jax.Array:
        """Expected value ``[B]`` (V, or Q when ``chunk`` is given)."""
        logits = self.net.apply(params, obs, chunk)
        return jnp.sum(
            jax.nn.softmax(logits, -1) * jnp.asarray(bin_centers(logits.shape[-1]), logits.dtype),
            -1,
        )

    def make_train_step(self):
        opt = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(optax.linear_schedule(0.0, self.cfg.lr, 100), weight_decay=1e-4),
        )
        p_hide = self.cfg.chunk_dropout

        @jax.jit
        def step(params, opt_state, key, obs, chunk, target_bins, q_bins):
            has = jax.random.uniform(key, target_bins.shape) >= p_hide
            # V's target where the chunk is hidden, Q's where it is shown
            bins = jnp.where(has, q_bins, target_bins)

            def loss_fn(p):
                logits = self.net.apply(p, obs, chunk, has)
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, bins)
                return ce.mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return opt, step

    def train(
        self,
        params,
        data,
        targets: np.ndarray,
        steps: int,
        seed: int = 0,
        progress=None,
        q_targets: np.ndarray | None = None,
    ):
        """Fit ``params`` to per-frame value ``targets`` ``[N]`` for ``steps`` steps on batches
        of ``data`` (a :class:`~anyskill.algos.vla.data.TrainingData`); step ``i`` hides chunks
        with the key ``fold_in(key(seed), i)``. ``q_targets`` ``[N]``: the targets of
        ``Q(s, chunk)`` where the chunk is shown (e.g. n-step backups,
        :func:`~anyskill.algos.recap.advantage.nstep_targets`; default ``targets``, the
        Monte-Carlo return of both). Returns ``(params, losses)``."""
        opt, step = _train_steps.setdefault(self, self.make_train_step())
        bins = to_bins(np.asarray(targets), NUM_BINS)
        q_bins = bins if q_targets is None else to_bins(np.asarray(q_targets), NUM_BINS)
        if q_bins.shape != bins.shape:
            raise ValueError(f"q_targets has shape {q_bins.shape}, targets {bins.shape}")
        key = jax.random.key(seed)

        def next_batch():
            b = data.batch()
            i = data.last_index
            return b.obs, b.actions, bins[i], q_bins[i]

        def step_fn(state, batch):
            params, opt_state, i = state
            params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), *batch)
            return (params, opt_state, i + 1), loss

        (params, _, _), losses = fit(
            step_fn, (params, opt.init(params), 0), next_batch, steps, progress
        )
        return params, np.asarray(jnp.stack(losses)) if losses else np.zeros(0)
