"""Residual MLPs that scale in depth (Wang et al., "1000 Layer Networks for Self-Supervised RL",
NeurIPS 2025, Sec. 3 and Fig. 2).

    x -> Dense -> LayerNorm -> Swish                      (input projection)
      -> [ResidualBlock] * (depth // 4)                   (stacked, run with lax.scan)
      -> Dense(out_dim)                                   (output head)

    ResidualBlock(h) = h + 4 x (Dense -> LayerNorm -> Swish)(h)   (skip after the last activation)

``depth`` counts the Dense layers inside residual blocks, so it must be a multiple of 4. The
blocks' parameters are stacked along a leading axis and applied with ``nn.scan``: compile time
and trace size stay flat as depth grows (DESIGN.md, "JAX habits").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# LeCun-uniform initialisation with zero biases, as in the paper's reference code.
lecun_uniform = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
LAYERS_PER_BLOCK = 4


def check_depth(depth: int, what: str = "depth") -> None:
    if depth < 0 or depth % LAYERS_PER_BLOCK != 0:
        raise ValueError(
            f"{what} counts Dense layers inside residual blocks of {LAYERS_PER_BLOCK} and must be "
            f"a non-negative multiple of {LAYERS_PER_BLOCK}, got {depth} "
            f"(try {max(LAYERS_PER_BLOCK, round(depth / LAYERS_PER_BLOCK) * LAYERS_PER_BLOCK)})"
        )


class DenseNormAct(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.width, kernel_init=lecun_uniform, bias_init=nn.initializers.zeros)(x)
        return nn.swish(nn.LayerNorm()(x))


class ResidualBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, h: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        x = h
        for _i in range(LAYERS_PER_BLOCK):
            x = DenseNormAct(self.width)(x)
        return h + x, None


class ResidualMLP(nn.Module):
    """``[..., in] -> [..., out_dim]`` with ``depth`` Dense layers inside residual blocks."""

    width: int
    depth: int
    out_dim: int

    def setup(self):
        check_depth(self.depth)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = DenseNormAct(self.width, name="input")(x)
        num_blocks = self.depth // LAYERS_PER_BLOCK
        if num_blocks:
            blocks = nn.scan(
                ResidualBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=num_blocks,
            )(self.width, name="blocks")
            x, _ = blocks(x, None)
        return nn.Dense(
            self.out_dim, kernel_init=lecun_uniform, bias_init=nn.initializers.zeros, name="head"
        )(x)


def residual_dense_layers(params) -> int:
    """Number of Dense layers inside the residual blocks of a ``ResidualMLP``'s params: the
    paper's depth. Counted from the parameters, so it checks what was actually built."""
    blocks = params.get("blocks")
    if blocks is None:
        return 0
    total = 0
    for name, layer in blocks.items():
        if name.startswith("DenseNormAct"):
            total += layer["Dense_0"]["kernel"].shape[0]  # stacked over blocks
    return total


def num_params(params) -> int:
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(params))
