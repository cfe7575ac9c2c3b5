"""Transformer pieces for the vision-language-action policy: word tokenizer, patch encoder,
and a two-stream ("mixture of experts" in π0's sense) block.

π0 (Black et al. 2024) runs two sets of weights over one sequence: the backbone over the
prefix (image patches, instruction, state) and a smaller *action expert* over the action
tokens. Both streams meet only in attention: each layer computes queries, keys and values
per stream with that stream's weights, and attention runs over the joint sequence under a
block-causal mask: prefix tokens see the prefix only, action tokens see the prefix and every
action token. Because the prefix never sees actions, its keys and values can be computed once
per observation and reused at every denoising step (:meth:`TwoStreamBlock.prefix` +
:meth:`TwoStreamBlock.action`), which must equal the joint pass (:meth:`TwoStreamBlock.joint`).
"""

from __future__ import annotations

import math
import re
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD = 0
#: Hashed word vocabulary: 0 = padding, 1..WORD_BUCKETS = a word's bucket. Nothing to
#: download, any phrasing has a tokenization, and the colour/shape/zone words shared by
#: different phrasings map to the same tokens (byte-level tokens learned far slower here).
WORD_BUCKETS = 4096
VOCAB = WORD_BUCKETS + 1


class TokenizeError(ValueError):
    pass


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tokenize(texts: list[str] | str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased words hashed (CRC-32) into WORD_BUCKETS buckets, right-padded:
    ``(tokens [B, max_len] int32, mask [B, max_len] bool)``.

    An instruction of more than ``max_len`` words is an error (a policy must not silently act
    on a truncated instruction)."""
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    out = np.zeros((len(texts), max_len), np.int32)
    for i, t in enumerate(texts):
        w = words(t)
        if len(w) > max_len:
            raise TokenizeError(
                f"instruction {t!r} has {len(w)} words, longer than the policy's text context "
                f"of {max_len}; shorten it or train with a larger --model.max-text-len"
            )
        out[i, : len(w)] = [zlib.crc32(x.encode()) % WORD_BUCKETS + 1 for x in w]
    mask = out != PAD
    return (out[0], mask[0]) if single else (out, mask)


def sincos_embedding(t: jax.Array, dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    """``[...]`` scalars in [0, 1] -> ``[..., dim]`` sine-cosine features (π0's time embedding)."""
    frac = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** frac
    ang = t[..., None] * (2 * math.pi / period)
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


class PatchEncoder(nn.Module):
    """``[B, H, W, 3]`` uint8 -> ``[B, (H/p)(W/p), width]``: linear patch embedding + learned
    position embedding (a ViT stem; the prefix transformer does the rest)."""

    width: int
    patch: int

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 127.5 - 1.0
        b, h, w, c = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        x = nn.Dense(self.width, name="proj")(x)
        pos = self.param("pos", nn.initializers.normal(0.02), (x.shape[1], self.width))
        return x + pos


class Stream(nn.Module):
    """One stream's weights in a block: pre-norm, q/k/v and output projections, MLP.

    ``mod`` (optional, ``[B, 6, width]``): adaptive-norm modulation from a conditioning input
    (DiT's adaLN, Peebles & Xie 2023, §3.2), rows ``shift1, scale1, gate1, shift2, scale2,
    gate2``: each norm's output becomes ``norm(h) * (1 + scale) + shift`` and each residual
    branch is multiplied by ``1 + gate``. All zero is the unmodulated block, so a zero-
    initialised modulation can be added to a trained network without changing it (DiT zeroes
    the gates themselves, which would switch a trained block off)."""

    width: int
    heads: int
    head_dim: int
    mlp_ratio: int = 4

    def setup(self):
        self.norm1 = nn.LayerNorm()
        self.qkv = nn.DenseGeneral((3, self.heads, self.head_dim))
        self.out = nn.DenseGeneral(self.width, axis=(-2, -1))
        self.norm2 = nn.LayerNorm()
        self.up = nn.Dense(self.width * self.mlp_ratio)
        self.down = nn.Dense(self.width)

    def project(self, h, mod=None):
        x = self.norm1(h)
        if mod is not None:
            x = x * (1 + mod[:, None, 1]) + mod[:, None, 0]
        qkv = self.qkv(x)  # [B, T, 3, heads, hd]
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def finish(self, h, attended, mod=None):
        if mod is None:
            h = h + self.out(attended)
            return h + self.down(nn.gelu(self.up(self.norm2(h))))
        h = h + (1 + mod[:, None, 2]) * self.out(attended)
        x = self.norm2(h) * (1 + mod[:, None, 4]) + mod[:, None, 3]
        return h + (1 + mod[:, None, 5]) * self.down(nn.gelu(self.up(x)))


def attention(q, k, v, mask):
    """q ``[B, Tq, H, D]``, k/v ``[B, Tk, H, D]``, mask ``[B, Tq, Tk]`` bool -> ``[B, Tq, H, D]``."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.where(mask[:, None], logits, jnp.finfo(logits.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def block_causal_mask(prefix_mask: jax.Array, num_actions: int) -> jax.Array:
    """``[B, P]`` valid-prefix mask -> ``[B, P + A, P + A]`` joint mask: prefix rows see valid
    prefix tokens; action rows see valid prefix tokens and every action token."""
    b, p = prefix_mask.shape
    a = num_actions
    cols = jnp.concatenate([prefix_mask, jnp.ones((b, a), bool)], axis=1)  # [B, P+A]
    is_prefix_col = jnp.arange(p + a) < p
    prefix_rows = jnp.broadcast_to((cols & is_prefix_col)[:, None, :], (b, p, p + a))
    action_rows = jnp.broadcast_to(cols[:, None, :], (b, a, p + a))
    return jnp.concatenate([prefix_rows, action_rows], axis=1)


class TwoStreamBlock(nn.Module):
    """A transformer block with separate weights for the prefix and the action tokens."""

    prefix_width: int
    action_width: int
    heads: int
    head_dim: int

    def setup(self):
        self.p = Stream(self.prefix_width, self.heads, self.head_dim, name="prefix")
        self.a = Stream(self.action_width, self.heads, self.head_dim, name="action")

    def joint(self, hp, ha, prefix_mask, mod=None):
        """Both streams in one attention over the joint sequence, block-causal mask. ``mod``:
        the action stream's modulation (see :class:`Stream`)."""
        qp, kp, vp = self.p.project(hp)
        qa, ka, va = self.a.project(ha, mod)
        q = jnp.concatenate([qp, qa], axis=1)
        k = jnp.concatenate([kp, ka], axis=1)
        v = jnp.concatenate([vp, va], axis=1)
        out = attention(q, k, v, block_causal_mask(prefix_mask, ha.shape[1]))
        p = hp.shape[1]
        return self.p.finish(hp, out[:, :p]), self.a.finish(ha, out[:, p:], mod)

    def prefix(self, hp, prefix_mask):
        """The prefix stream alone; returns its output and its keys/values (the cache)."""
        qp, kp, vp = self.p.project(hp)
        mask = jnp.broadcast_to(prefix_mask[:, None, :], (hp.shape[0], hp.shape[1], hp.shape[1]))
        return self.p.finish(hp, attention(qp, kp, vp, mask)), (kp, vp)

    def action(self, ha, cache, prefix_mask, mod=None):
        """The action stream alone, attending to cached prefix keys/values and itself."""
        kp, vp = cache
        qa, ka, va = self.a.project(ha, mod)
        k = jnp.concatenate([kp, ka], axis=1)
        v = jnp.concatenate([vp, va], axis=1)
        b, a = ha.shape[0], ha.shape[1]
        cols = jnp.concatenate([prefix_mask, jnp.ones((b, a), bool)], axis=1)
        mask = jnp.broadcast_to(cols[:, None, :], (b, a, cols.shape[1]))
        return self.a.finish(ha, attention(qa, k, v, mask), mod)
