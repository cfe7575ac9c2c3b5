"""Depth accounting and the shape of the residual MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anyskill.nets.residual import (
    ResidualBlock,
    ResidualMLP,
    check_depth,
    num_params,
    residual_dense_layers,
)


@pytest.mark.parametrize("depth", [0, 4, 8, 32])
def test_depth_counts_dense_layers_in_blocks(depth):
    m = ResidualMLP(width=16, depth=depth, out_dim=3)
    params = m.init(jax.random.PRNGKey(0), jnp.zeros((2, 5)))["params"]
    assert residual_dense_layers(params) == depth
    width, n_in, out = 16, 5, 3
    dense_norm = lambda i: i * width + width + 2 * width  # noqa: E731 kernel+bias+LayerNorm
    expected = dense_norm(n_in) + depth * dense_norm(width) + width * out + out
    assert num_params(params) == expected


def test_bad_depth_message():
    with pytest.raises(ValueError, match="multiple of 4, got 10 \\(try 8\\)"):
        check_depth(10)
    with pytest.raises(ValueError, match="multiple of 4"):
        ResidualMLP(8, 6, 2).init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))


def test_scan_equals_unrolled_blocks():
    """nn.scan over stacked blocks computes the same as applying each block in turn."""
    m = ResidualMLP(width=8, depth=12, out_dim=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    params = m.init(jax.random.PRNGKey(0), x)["params"]
    y = m.apply({"params": params}, x)

    from anyskill.nets.residual import DenseNormAct

    h = DenseNormAct(8).apply({"params": params["input"]}, x)
    for b in range(3):
        block_params = jax.tree.map(lambda a, b=b: a[b], params["blocks"])
        h, _ = ResidualBlock(8).apply({"params": block_params}, h)
    out = h @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(out), rtol=1e-5, atol=1e-5)


def test_skip_added_after_last_activation():
    """With all block weights zero, Dense->LN->Swish gives swish(LN bias)=swish(0)=0, so the
    block is the identity: the skip is added after the activation, not before it."""
    blk = ResidualBlock(4)
    h = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    params = blk.init(jax.random.PRNGKey(1), h)["params"]
    params = jax.tree.map(jnp.zeros_like, params)
    out, _ = blk.apply({"params": params}, h)
    np.testing.assert_allclose(np.asarray(out), np.asarray(h), atol=1e-6)
