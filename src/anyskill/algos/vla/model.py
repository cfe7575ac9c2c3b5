"""A small π0-style vision-language-action model and the MLP baselines, behind one interface.

``PolicyModel`` (built by ``make_model(config)``) offers ``init(key)``,
``loss(params, key, batch) -> (scalar, metrics)`` and ``sample(params, key, obs)`` on
normalized inputs; :mod:`anyskill.algos.vla.policy` adds normalization and tokenization.

Flow matching (π0 / openpi conventions): ``x_t = t * noise + (1 - t) * actions`` with
``t = 0.999 * Beta(1.5, 1) + 0.001``; the network regresses the velocity
``u = noise - actions``; sampling integrates from ``t = 1`` (pure noise) to ``t = 0`` with
``N`` Euler steps ``x <- x - v / N``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from anyskill.algos.vla.config import ModelConfig
from anyskill.nets.transformer import (
    VOCAB,
    PatchEncoder,
    TwoStreamBlock,
    sincos_embedding,
    tokenize,
)

# values of ``Obs.indicator``: the policy protocol's (a served policy sets them)
from anyskill.policies.base import (  # noqa: F401  (re-exported)
    INDICATOR_NEGATIVE,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
)


@struct.dataclass
class Obs:
    """Normalized model inputs for a batch.

    state:     [B, S] float32, normalized robot/scene state
    images:    [B, C, H, W, 3] uint8, one image per camera
    tokens:    [B, L] int32 instruction bytes (+1), 0 = padding
    text_mask: [B, L] bool
    indicator: [B] int32 advantage indicator (RECAP, models with ``indicator=True``):
               0 none, 1 positive, 2 negative; None: no indicator input at all
    """

    state: jax.Array
    images: jax.Array
    tokens: jax.Array
    text_mask: jax.Array
    indicator: jax.Array | None = None


@struct.dataclass
class Batch:
    """A training batch: observation, normalized action chunk ``[B, H, A]`` and its mask
    ``[B, H]`` (False past the episode end). ``weight`` ``[B]`` float32 > 0: per-sample
    weights of the loss (advantage-weighted regression), None: unweighted."""

    obs: Obs
    actions: jax.Array
    action_mask: jax.Array
    weight: jax.Array | None = None
    subtask: jax.Array | None = None
    """[B] int32 subtask class label (models with ``subtasks``; -1: unlabelled, no loss)."""
    subtask_tokens: jax.Array | None = None
    """[B, L] int32 the action expert's prompt: the labelled subtask's text (teacher
    forcing), the instruction where unlabelled or the subtask is the task itself."""


#: grounded words of an instruction that get their own mention-order embedding
MAX_MENTIONS = 8


def grounded_vocab(state_token_words) -> tuple[str, ...]:
    """Every word that names some entity (colours, shapes), in a fixed order."""
    vocab: dict[str, None] = {}
    for segments in state_token_words:
        for _, names in segments:
            vocab.update(dict.fromkeys(names))
    return tuple(vocab)


def name_ids(names, state_token_words) -> jax.Array:
    """Indices of ``names`` in :func:`grounded_vocab`."""
    vocab = grounded_vocab(state_token_words)
    return jnp.asarray([vocab.index(n) for n in names])


def mention_order(tokens: jax.Array, state_token_words) -> jax.Array:
    """``[B, V]``: for each grounded word, how many other grounded words the instruction
    mentions before its first occurrence (0 for the first; words not mentioned get a rank too,
    but it is never used). The order tells the roles apart where the words alone do not: the
    object's colour comes before the zone's in every push phrasing, the target before the
    anchor in every gather phrasing."""
    vocab = grounded_vocab(state_token_words)
    ids = jnp.asarray(tokenize(" ".join(vocab), len(vocab))[0])  # [V]
    hit = tokens[:, :, None] == ids  # [B, L, V]
    L = tokens.shape[1]
    first = jnp.where(hit.any(1), jnp.argmax(hit, axis=1), L)  # [B, V]
    said = first < L
    before = (first[:, None, :] < first[:, :, None]) & said[:, None, :]  # [B, V, V']: V' first
    return jnp.minimum(before.sum(-1), MAX_MENTIONS - 1)


def sample_time(key, shape):
    return 0.999 * jax.random.beta(key, 1.5, 1.0, shape) + 0.001


def euler(velocity, x1: jax.Array, num_steps: int) -> jax.Array:
    """Integrate ``dx/dt = velocity(x, t)`` from ``t = 1`` to ``t = 0`` in ``num_steps`` steps."""
    dt = 1.0 / num_steps

    def step(x, i):
        t = 1.0 - i * dt
        return x - dt * velocity(x, jnp.full(x.shape[:1], t, x.dtype)), None

    x0, _ = jax.lax.scan(step, x1, jnp.arange(num_steps))
    return x0


#: Largest guidance weight of real-time chunking's inpainting (Black et al., 2025, use 5).
MAX_GUIDANCE = 5.0


def realtime_weights(horizon: int, length: jax.Array, delay: jax.Array) -> jax.Array:
    """Real-time chunking's soft mask ``[B, H]`` over a new chunk's actions: 1 on the first
    ``delay`` (executed before the chunk can arrive), then decaying exponentially,
    ``c (e^c - 1) / (e - 1)`` with ``c = (length - i) / (length - delay + 1)``, over the rest
    of the overlap with the previous plan (``length`` actions), 0 beyond it."""
    i = jnp.arange(horizon)[None]
    n = jnp.asarray(length)[:, None]
    d = jnp.minimum(jnp.asarray(delay), jnp.asarray(length))[:, None]
    c = (n - i) / jnp.maximum(n - d + 1, 1)
    soft = c * jnp.expm1(c) / (jnp.e - 1)
    return jnp.where(i < d, 1.0, jnp.where(i < n, soft, 0.0)).astype(jnp.float32)


def guided_inpaint(velocity, x1, prefix, weights, num_steps: int, max_guidance: float):
    """Euler integration of ``velocity`` from noise ``x1`` (t = 1) to actions (t = 0), each
    step pulled toward ``prefix`` where ``weights`` ``[B, H]`` are non-zero by pseudo-inverse
    guidance (ΠGDM, as real-time chunking uses it): with the predicted clean chunk
    ``â = x - t v(x, t)`` and ``e = W (prefix - â)``, the velocity becomes
    ``v - w(t) (∂â/∂x)ᵀ e``, ``w(t) = min(max_guidance, ((1-t)² + t²) / (t (1-t)))``.
    All-zero weights give plain sampling."""
    dt = 1.0 / num_steps
    w = weights[..., None].astype(x1.dtype)

    def step(x, i):
        t = 1.0 - i * dt
        v, pull = jax.vjp(lambda y: velocity(y, jnp.full(y.shape[:1], t, y.dtype)), x)
        err = w * (prefix - (x - t * v))
        grad = err - t * pull(err)[0]  # (∂â/∂x)ᵀ err, â = x - t v(x)
        gw = jnp.minimum(max_guidance, ((1 - t) ** 2 + t**2) / jnp.maximum(t * (1 - t), 1e-9))
        return x - dt * (v - gw * grad), None

    x0, _ = jax.lax.scan(step, x1, jnp.arange(num_steps))
    return x0


def prefix_euler(velocity, x1, prefix, delay, num_steps: int):
    """Euler integration for a delay-aware model (``ModelConfig.max_delay``): the first
    ``delay[b]`` actions are held at ``prefix`` with flow time 0 (how training showed them)
    and only the rest is denoised."""
    dt = 1.0 / num_steps
    held = jnp.arange(x1.shape[1])[None] < jnp.asarray(delay)[:, None]  # [B, H]
    x1 = jnp.where(held[..., None], prefix, x1)

    def step(x, i):
        t = jnp.where(held, 0.0, 1.0 - i * dt).astype(x.dtype)
        v = velocity(x, t)
        return x - dt * jnp.where(held[..., None], 0.0, v), None

    x0, _ = jax.lax.scan(step, x1, jnp.arange(num_steps))
    return x0


# ---- the π0-style transformer ---------------------------------------------------------------


def subtask_trunk_config(c: ModelConfig) -> ModelConfig:
    """The subtask head's trunk: the same prefix (cameras, instruction, grounded entity
    tokens) at ``subtask_width`` x ``subtask_depth``; its action stream is never built."""
    return dataclasses.replace(
        c,
        width=c.subtask_width,
        depth=c.subtask_depth,
        action_width=8,
        subtasks=False,
        subtask_slots=(),
        indicator=False,
        indicator_modulation=False,
        max_delay=0,
    )


class VLA(nn.Module):
    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        self.patches = [
            PatchEncoder(c.width, c.patch_size, name=f"camera{i}") for i in range(c.num_cameras)
        ]
        self.text_embed = nn.Embed(VOCAB, c.width)
        self.text_pos = self.param(
            "text_pos", nn.initializers.normal(0.02), (c.max_text_len, c.width)
        )
        if c.state_tokens:
            kinds = sorted({k for _, _, k in c.state_tokens})
            self.entity_proj = {str(k): nn.Dense(c.width, name=f"entity{k}") for k in kinds}
            self.entity_pos = self.param(
                "entity_pos", nn.initializers.normal(0.02), (len(c.state_tokens), c.width)
            )
            if c.state_token_words:
                n_seg = max(len(w) for w in c.state_token_words)
                self.mention = self.param("mention", nn.initializers.normal(1.0), (n_seg, c.width))
                self.mention_order = self.param(
                    "mention_order", nn.initializers.normal(1.0), (MAX_MENTIONS, c.width)
                )
        else:
            self.state_proj = nn.Dense(c.width)
        self.blocks = [
            TwoStreamBlock(c.width, c.action_width, c.heads, c.head_dim, name=f"block{i}")
            for i in range(c.depth)
        ]
        self.action_in = nn.Dense(c.action_width)
        self.time_mlp1 = nn.Dense(c.action_width)
        self.time_mlp2 = nn.Dense(c.action_width)
        self.action_pos = self.param(
            "action_pos", nn.initializers.normal(0.02), (c.horizon, c.action_width)
        )
        self.action_norm = nn.LayerNorm()
        self.action_out = nn.Dense(c.action_dim)
        self.prefix_norm = nn.LayerNorm()
        if c.indicator:
            # zero at initialisation: adding it to a trained policy leaves its actions as they
            # were until fine-tuning teaches it what "positive" means
            self.indicator_embed = self.param(
                "indicator", nn.initializers.zeros, (3, c.action_width)
            )
        if c.indicator_modulation:
            # per block and indicator value: the rows of Stream's modulation, zero = none
            self.indicator_mod = self.param(
                "indicator_mod", nn.initializers.zeros, (c.depth, 3, 6, c.action_width)
            )
        if c.subtasks:
            # Knowledge insulation (π0.5, Driess et al. 2025): the subtask head has its own
            # small trunk (the same grounded prefix code, its own weights) and the action
            # expert is conditioned on the subtask's *text* (a discrete choice), so no
            # gradient crosses between the flow loss and the subtask head.
            self.subtask_trunk = VLA(subtask_trunk_config(c), name="subtask_trunk")
            self.subtask_task = nn.Dense(1, name="subtask_task")
            self.subtask_slot = nn.Dense(1, name="subtask_slot")

    def embed_prefix(self, obs: Obs):
        b = obs.state.shape[0]
        parts = [enc(obs.images[:, i]) for i, enc in enumerate(self.patches)]
        masks = [jnp.ones(p.shape[:2], bool) for p in parts]
        parts.append(self.text_embed(obs.tokens) + self.text_pos[None, : obs.tokens.shape[1]])
        masks.append(obs.text_mask)
        parts.append(self.embed_state(obs))
        masks.append(jnp.ones((b, parts[-1].shape[1]), bool))
        return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)

    def embed_state(self, obs: Obs) -> jax.Array:
        """``[B, T, width]`` state tokens: one linear projection of the whole state (any
        robot's proprioception), or, when the data declares its state's entities
        (``cfg.state_tokens``), one token per entity grounded in the instruction."""
        if not self.cfg.state_tokens:
            return self.state_proj(obs.state)[:, None]
        ents = [self.entity_proj[str(k)](obs.state[:, a:z]) for a, z, k in self.cfg.state_tokens]
        order = mention_order(obs.tokens, self.cfg.state_token_words)
        for j, segments in enumerate(self.cfg.state_token_words):
            a = self.cfg.state_tokens[j][0]
            for i, (off, names) in enumerate(segments):
                ids = jnp.asarray(tokenize(" ".join(names), len(names))[0])
                emb = self.text_embed(ids)  # [n, width]
                said = (obs.tokens[:, :, None] == ids).any(1).astype(emb.dtype)  # [B, n]
                if off < 0:
                    hot = jnp.ones_like(said)
                else:
                    # a one-hot feature normalizes to > 0 where it is 1 and < 0 elsewhere
                    hot = (obs.state[:, a + off : a + off + len(names)] > 0).astype(emb.dtype)
                mentioned = (hot * said).sum(-1, keepdims=True)
                # which grounded word of the instruction names this entity, in order: in
                # "push the green block into the yellow zone" both the green and the
                # yellow zone are mentioned, but only yellow is the 3rd grounded word
                rank = jax.nn.one_hot(
                    order[:, name_ids(names, self.cfg.state_token_words)], MAX_MENTIONS
                )
                said_rank = (hot * said)[..., None] * rank  # [B, n, MAX_MENTIONS]
                ents[j] = (
                    ents[j]
                    + hot @ emb
                    + mentioned * self.mention[i]
                    + said_rank.sum(1) @ self.mention_order
                )
        return jnp.stack(ents, axis=1) + self.entity_pos[None]

    def embed_actions(self, x_t, t, indicator=None):
        a = self.action_in(x_t)
        # one flow time per chunk ([B]) or per action ([B, H]: delay-aware training and
        # sampling, where the committed actions are clean, time 0)
        te = sincos_embedding(t, self.cfg.action_width)
        tt = jnp.broadcast_to(te if t.ndim == 2 else te[:, None], a.shape)
        h = self.time_mlp2(nn.swish(self.time_mlp1(jnp.concatenate([a, tt], axis=-1))))
        h = h + self.action_pos[None]
        if indicator is not None:
            if not self.cfg.indicator:
                raise ValueError(
                    "this model has no indicator input (ModelConfig.indicator=False); pass "
                    "Obs.indicator=None or build the model with indicator=True"
                )
            h = h + self.indicator_embed[indicator][:, None]
        return h

    def modulation(self, indicator):
        """Per block, the action stream's ``[B, 6, action_width]`` modulation for this
        indicator (None without ``indicator_modulation`` or without an indicator)."""
        if indicator is None or not self.cfg.indicator_modulation:
            return [None] * self.cfg.depth
        return list(self.indicator_mod[:, indicator])  # depth x [B, 6, W]

    def velocity_joint(self, obs: Obs, x_t, t):
        """One pass over the joint sequence (training; the uncached reference)."""
        hp, mask = self.embed_prefix(obs)
        ha = self.embed_actions(x_t, t, obs.indicator)
        for blk, mod in zip(self.blocks, self.modulation(obs.indicator), strict=True):
            hp, ha = blk.joint(hp, ha, mask, mod)
        return self.action_out(self.action_norm(ha))

    def encode(self, obs: Obs):
        """The prefix alone: per-block key/value cache, prefix mask, final prefix features."""
        hp, mask = self.embed_prefix(obs)
        cache = []
        for blk in self.blocks:
            hp, kv = blk.prefix(hp, mask)
            cache.append(kv)
        return cache, mask, self.prefix_norm(hp)

    def velocity_cached(self, cache, mask, x_t, t, indicator=None):
        ha = self.embed_actions(x_t, t, indicator)
        mods = self.modulation(indicator)
        for blk, kv, mod in zip(self.blocks, cache, mods, strict=True):
            ha = blk.action(ha, kv, mask, mod)
        return self.action_out(self.action_norm(ha))

    def __call__(self, obs: Obs, x_t, t):
        return self.velocity_joint(obs, x_t, t)

    def subtask_logits(self, obs: Obs) -> jax.Array:
        """``[B, 1 + len(subtask_slots)]`` logits of the next subtask: class 0 "the task as
        instructed" (from the trunk's pooled features), class ``1 + i`` the subtask about the
        entity ``subtask_slots[i]`` (a pointer: one score per entity token)."""
        c = self.cfg
        _, mask, h = self.subtask_trunk.encode(obs)  # [B, P, w]
        m = mask[..., None].astype(h.dtype)
        pooled = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        first_state = h.shape[1] - len(c.state_tokens)  # state tokens close the prefix
        slots = h[:, [first_state + i for i in c.subtask_slots]]  # [B, S, w]
        return jnp.concatenate(
            [self.subtask_task(pooled), self.subtask_slot(slots)[..., 0]], axis=-1
        )

    def init_all(self, obs: Obs, x_t, t):
        """Touches every parameter (``encode``'s prefix_norm is not on the training path)."""
        self.encode(obs)
        if self.cfg.subtasks:
            self.subtask_logits(obs)
        return self.velocity_joint(obs, x_t, t)


# ---- MLP baselines ----------------------------------------------------------------------------


class MLPPolicyNet(nn.Module):
    """The baselines' network: the same inputs, pooled into one feature vector (mean of patch
    embeddings per camera, mean of byte embeddings, state), then an MLP. ``kind="bc"``
    regresses the chunk; ``kind="flow"`` predicts the flow-matching velocity."""

    cfg: ModelConfig
    kind: str

    @nn.compact
    def __call__(self, obs: Obs, x_t=None, t=None):
        c = self.cfg
        feats = []
        for i in range(c.num_cameras):
            feats.append(
                PatchEncoder(c.width, c.patch_size, name=f"camera{i}")(obs.images[:, i]).mean(1)
            )
        emb = nn.Embed(VOCAB, c.width)(obs.tokens)
        m = obs.text_mask[..., None].astype(jnp.float32)
        feats.append((emb * m).sum(1) / jnp.maximum(m.sum(1), 1.0))
        feats.append(obs.state)
        h = jnp.concatenate(feats, axis=-1)
        b = h.shape[0]
        if self.kind == "flow":
            h = jnp.concatenate(
                [h, x_t.reshape(b, -1), sincos_embedding(t, c.action_width)], axis=-1
            )
        for _ in range(c.depth):
            h = nn.swish(nn.LayerNorm()(nn.Dense(c.mlp_width)(h)))
        return nn.Dense(c.horizon * c.action_dim)(h).reshape(b, c.horizon, c.action_dim)


# ---- one interface --------------------------------------------------------------------------


def subtask_cross_entropy(logits: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy ``-log softmax(logits)[label]`` over the rows with ``label >= 0``
    (``[B, K]``, ``[B]``) and the accuracy of the argmax there; both 0 when no row is
    labelled (an unlabelled batch contributes no gradient)."""
    valid = label >= 0
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(label, 0)[:, None], -1)[:, 0]
    m = valid.astype(logits.dtype)
    n = jnp.maximum(m.sum(), 1.0)
    hit = (jnp.argmax(logits, -1) == label).astype(logits.dtype)
    return jnp.sum(nll * m) / n, jnp.sum(hit * m) / n


def _masked_mse(pred, target, mask, weight=None):
    """Mean squared error over the valid frames ``mask`` ``[B, H]``; with ``weight`` ``[B]``,
    the weighted mean ``sum_bh w_b m_bh e_bh / sum_bh w_b m_bh``: self-normalised over the
    batch, so its scale (and the gradient's, under the same lr and clipping) is BC's whatever
    the weights' scale; with full masks, the ``w``-weighted mean of per-sample losses."""
    err = jnp.mean((pred - target) ** 2, axis=-1)  # [B, H]
    m = mask.astype(jnp.float32)
    if weight is None:  # the unweighted loss exactly as before weights existed (bit for bit)
        return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0)
    wm = weight.astype(jnp.float32)[:, None] * m
    # a tiny floor, not 1.0: weights can be far below 1 and the ratio must stay their mean
    return jnp.sum(err * wm) / jnp.maximum(jnp.sum(wm), 1e-12)


@dataclasses.dataclass(frozen=True)
class PolicyModel:
    """``init``, ``loss`` and ``sample`` for one of the architectures (``cfg.arch``)."""

    cfg: ModelConfig

    @property
    def net(self) -> nn.Module:
        if self.cfg.arch == "vla":
            return VLA(self.cfg)
        return MLPPolicyNet(self.cfg, "bc" if self.cfg.arch == "mlp-bc" else "flow")

    def fake_obs(self, batch_size: int = 2) -> Obs:
        c = self.cfg
        return Obs(
            state=jnp.zeros((batch_size, c.state_dim)),
            images=jnp.zeros((batch_size, c.num_cameras, c.image_size, c.image_size, 3), jnp.uint8),
            tokens=jnp.ones((batch_size, c.max_text_len), jnp.int32),
            text_mask=jnp.ones((batch_size, c.max_text_len), bool),
        )

    def init(self, key) -> Any:
        obs = self.fake_obs()
        x = jnp.zeros((2, self.cfg.horizon, self.cfg.action_dim))
        if self.cfg.arch == "mlp-bc":
            return self.net.init(key, obs)
        if self.cfg.arch == "vla":
            return self.net.init(key, obs, x, jnp.zeros((2,)), method=VLA.init_all)
        return self.net.init(key, obs, x, jnp.zeros((2,)))

    def loss(self, params, key, batch: Batch):
        if self.cfg.arch == "mlp-bc":
            pred = self.net.apply(params, batch.obs)
            loss = _masked_mse(pred, batch.actions, batch.action_mask, batch.weight)
            return loss, {"loss": loss}
        k_noise, k_t, k_d = jax.random.split(key, 3)
        noise = jax.random.normal(k_noise, batch.actions.shape)
        t = sample_time(k_t, batch.actions.shape[:1])
        mask = batch.action_mask
        if self.cfg.max_delay:
            # delay-aware: the first d actions are the committed prefix, given clean (time 0)
            # and not predicted; the rest is denoised as usual
            b, h = batch.actions.shape[:2]
            d = jax.random.randint(k_d, (b,), 0, self.cfg.max_delay + 1)
            committed = jnp.arange(h)[None] < d[:, None]  # [B, H]
            t = jnp.where(committed, 0.0, t[:, None])
            mask = mask & ~committed
            tx = t[..., None]
        else:
            tx = t[:, None, None]
        x_t = tx * noise + (1 - tx) * batch.actions
        if not self.cfg.subtasks:
            v = self.net.apply(params, batch.obs, x_t, t)
            loss = _masked_mse(v, noise - batch.actions, mask, batch.weight)
            return loss, {"loss": loss}
        # π0.5: the action expert reads the subtask's text (teacher-forced label), the
        # subtask head reads the instruction; disjoint parameters (knowledge insulation)
        flow = self.flow_loss(params, batch, x_t, t, noise, mask)
        ce, acc = self.subtask_loss(params, batch)
        loss = flow + self.cfg.subtask_weight * ce
        return loss, {"loss": loss, "flow_loss": flow, "subtask_loss": ce, "subtask_acc": acc}

    def flow_loss(self, params, batch: Batch, x_t, t, noise, mask) -> jax.Array:
        """Flow matching with the action expert prompted by ``batch.subtask_tokens``."""
        if batch.subtask_tokens is None:
            raise ValueError(
                "a model with subtasks=True trains on batches with subtask labels "
                "(Batch.subtask and Batch.subtask_tokens; TrainingData builds them)"
            )
        low = batch.obs.replace(tokens=batch.subtask_tokens, text_mask=batch.subtask_tokens != 0)
        v = self.net.apply(params, low, x_t, t)
        return _masked_mse(v, noise - batch.actions, mask, batch.weight)

    def subtask_loss(self, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Cross-entropy of the subtask head on the labelled frames (``subtask >= 0``; the
        others are masked out) and its accuracy there; 0 and 0 without labelled frames."""
        logits = self.net.apply(params, batch.obs, method=VLA.subtask_logits)
        return subtask_cross_entropy(logits, batch.subtask)

    def subtask_probs(self, params, obs: Obs) -> jax.Array:
        """``[B, num_subtask_classes]`` probabilities of the next subtask (normalized obs)."""
        return jax.nn.softmax(self.net.apply(params, obs, method=VLA.subtask_logits), -1)

    def sample(self, params, key, obs: Obs, num_steps: int | None = None, cached: bool = True):
        """Action chunks ``[B, H, A]`` (normalized). ``cached``: the prefix's keys/values are
        computed once and reused at every Euler step (VLA only; the MLPs have no prefix)."""
        c = self.cfg
        n = num_steps or c.num_steps
        b = obs.state.shape[0]
        if c.arch == "mlp-bc":
            return self.net.apply(params, obs)
        x1 = jax.random.normal(key, (b, c.horizon, c.action_dim))
        if c.arch == "vla" and cached:
            cache, mask, _ = self.net.apply(params, obs, method=VLA.encode)

            def vel(x, t):
                return self.net.apply(
                    params, cache, mask, x, t, obs.indicator, method=VLA.velocity_cached
                )

        else:

            def vel(x, t):
                return self.net.apply(params, obs, x, t)

        return euler(vel, x1, n)

    def velocity_fn(self, params, obs: Obs):
        """``vel(x, t)``: the flow's velocity for ``obs`` (the VLA's prefix encoded once)."""
        if self.cfg.arch == "mlp-bc":
            raise ValueError("mlp-bc has no flow: it regresses whole chunks")
        if self.cfg.arch == "vla":
            cache, mask, _ = self.net.apply(params, obs, method=VLA.encode)
            return lambda x, t: self.net.apply(
                params, cache, mask, x, t, obs.indicator, method=VLA.velocity_cached
            )
        return lambda x, t: self.net.apply(params, obs, x, t)

    def sample_realtime(
        self,
        params,
        key,
        obs: Obs,
        prefix: jax.Array,
        length: jax.Array,
        delay: jax.Array,
        num_steps: int | None = None,
        max_guidance: float = MAX_GUIDANCE,
        soft: bool = True,
    ):
        """Real-time chunking: chunks ``[B, H, A]`` (normalized) that continue ``prefix``
        ``[B, H, A]`` (normalized; row b's first ``length[b]`` entries are the actions the
        robot will still execute from the observation's step on, the rest padding). The
        first ``delay[b]`` of them happen before the chunk can arrive: frozen. Models
        trained with ``max_delay`` take them as clean input tokens
        (:func:`prefix_euler`); any other flow model inpaints them by guidance
        (:func:`guided_inpaint`, soft mask :func:`realtime_weights`). Rows with
        ``length == 0`` are sampled as by :meth:`sample`. ``soft=False``: guide only the
        frozen actions (no decaying weights over the rest of the overlap)."""
        c = self.cfg
        n = num_steps or c.num_steps
        b = obs.state.shape[0]
        x1 = jax.random.normal(key, (b, c.horizon, c.action_dim))
        vel = self.velocity_fn(params, obs)
        delay = jnp.minimum(delay, length)
        if c.max_delay:
            return prefix_euler(vel, x1, prefix, jnp.minimum(delay, c.max_delay), n)
        w = realtime_weights(c.horizon, length if soft else delay, delay)
        return guided_inpaint(vel, x1, prefix, w, n, max_guidance)

    def sample_guided(
        self, params, key, obs: Obs, obs_uncond: Obs, beta: float, num_steps: int | None = None
    ):
        """Classifier-free guidance (flow models): the velocity ``v_u + beta * (v_c - v_u)``
        of the conditioned (``obs``, e.g. "advantage: positive") and unconditioned
        (``obs_uncond``) inputs; ``beta = 1`` is plain conditioned sampling."""
        c = self.cfg
        if c.arch == "mlp-bc":
            raise ValueError("guidance needs a flow policy (vla or mlp-flow), not mlp-bc")
        n = num_steps or c.num_steps
        b = obs.state.shape[0]
        x1 = jax.random.normal(key, (b, c.horizon, c.action_dim))
        if c.arch == "vla":
            cc, mc, _ = self.net.apply(params, obs, method=VLA.encode)
            if obs_uncond.tokens is obs.tokens and obs_uncond.state is obs.state:
                cu, mu = cc, mc  # only the indicator differs: one prefix serves both
            else:
                cu, mu, _ = self.net.apply(params, obs_uncond, method=VLA.encode)
            ic, iu = obs.indicator, obs_uncond.indicator

            def vel(x, t):
                vc = self.net.apply(params, cc, mc, x, t, ic, method=VLA.velocity_cached)
                vu = self.net.apply(params, cu, mu, x, t, iu, method=VLA.velocity_cached)
                return vu + beta * (vc - vu)

        else:

            def vel(x, t):
                vc = self.net.apply(params, obs, x, t)
                vu = self.net.apply(params, obs_uncond, x, t)
                return vu + beta * (vc - vu)

        return euler(vel, x1, n)

    def with_indicator(self, params) -> Any:
        """``params`` of the same model without the indicator input, plus a zero indicator
        embedding and, with ``indicator_modulation``, zero modulation rows (the model must
        have ``indicator=True``): the policy is unchanged until fine-tuned with an
        indicator."""
        if not self.cfg.indicator or self.cfg.arch != "vla":
            raise ValueError("with_indicator needs a vla model built with indicator=True")
        c = self.cfg
        inner = dict(params["params"])
        if "indicator" not in inner:
            inner["indicator"] = jnp.zeros((3, c.action_width), jnp.float32)
        if c.indicator_modulation and "indicator_mod" not in inner:
            inner["indicator_mod"] = jnp.zeros((c.depth, 3, 6, c.action_width), jnp.float32)
        return {**params, "params": inner}

    def prefix_features(self, params, obs: Obs) -> jax.Array:
        """``[B, P, width]`` final prefix features (the value function's shared encoder)."""
        return self.net.apply(params, obs, method=VLA.encode)[2]
