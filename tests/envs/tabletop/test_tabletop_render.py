"""The tabletop camera shows the state: objects, pusher, zones, table and walls where the
physics puts them, in their colours. (Named ``test_tabletop_render`` because
``tests/envs/test_render.py`` already exists and test basenames must be unique.)

Expected colours are computed here independently, in float64 numpy, from the bodies'
geometry; only pixels clearly inside or clearly outside a shape (by more than a pixel) are
compared, since edges are anti-aliased.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.env import ZONE_HALF
from anyskill.envs.tabletop.render import PUSHER_RGB, TABLE_RGB, WALL_RGB, ZONE_TINT

STATES = range(0, 240, 20)  # a dozen reset states of every family


def at(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.fixture(scope="module")
def host(resets):
    return jax.device_get(resets.physics)


@functools.cache
def renderer(env, size: int, batched: bool = False):
    fn = functools.partial(env.render_image, size=size)
    return jax.jit(jax.vmap(fn) if batched else fn)


def world(size: int, table_half: float = 1.0):
    """World (x, y) of every pixel centre: row 0 is the far edge (+y), column 0 is -x."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c * table_half, -c * table_half)


def sdf(px, py, centre, angle, half, radius):
    """Signed distance to a rounded box, float64, independent of render.rounded_box_sdf."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = px - centre[0], py - centre[1]
    u = np.abs(c * dx + s * dy) - half[0]
    v = np.abs(-s * dx + c * dy) - half[1]
    outside = np.hypot(np.maximum(u, 0), np.maximum(v, 0))
    return outside + np.minimum(np.maximum(u, v), 0) - radius


def pixel_of(xy, size):
    """(row, col) of the pixel containing world point ``xy``."""
    return int((1 - xy[1]) / 2 * size), int((xy[0] + 1) / 2 * size)


@pytest.mark.parametrize("size", [64, 128])
def test_image_shape_and_dtype(env, host, size):
    image = renderer(env, size)(at(host, 0))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("size", [64, 128])
def test_centre_pixels_show_objects_and_pusher(env, host, size):
    """The pixel under each present object's centre has exactly the object's colour, the
    pixel under the pusher's centre the pusher's; absent objects are not drawn."""
    for i in STATES:
        p = at(host, i)
        image = np.asarray(renderer(env, size)(p))
        for k in range(env.num_objects):
            if p.colour[k] < 0:
                continue
            row, col = pixel_of(p.bodies.pos[k + 1], size)
            np.testing.assert_array_equal(image[row, col], T.COLOUR_RGB[p.colour[k]], (i, k))
        row, col = pixel_of(p.bodies.pos[0], size)
        np.testing.assert_array_equal(image[row, col], PUSHER_RGB, i)


@pytest.mark.parametrize("size", [64, 128])
def test_every_clear_pixel_matches_the_geometry(env, host, size):
    """Pixels more than a pixel inside a body show its colour; pixels more than a pixel away
    from every body show the zone tint inside a zone and the table colour elsewhere; the
    border is wall. (+-1 for the renderer's float32 blending and rounding.)"""
    px, py = world(size)
    margin = 2.0 / size  # one pixel in world units
    tint = np.round((1 - ZONE_TINT) * TABLE_RGB + ZONE_TINT * T.COLOUR_RGB)
    for i in STATES:
        p = at(host, i)
        image = np.asarray(renderer(env, size)(p)).astype(int)
        b = p.bodies
        expected = np.full((size, size, 3), -1)  # -1: an edge, not compared
        outside_zones = np.ones((size, size), bool)
        for z in range(4):
            d = sdf(px, py, p.zones[z], 0.0, (ZONE_HALF, ZONE_HALF), 0.0)
            expected[d < -margin] = tint[z]
            outside_zones &= d > margin
        expected[outside_zones] = TABLE_RGB
        near_body = np.zeros((size, size), bool)
        bodies = [(k + 1, T.COLOUR_RGB[p.colour[k]]) for k in range(3) if p.colour[k] >= 0]
        for j, rgb in [*bodies, (0, PUSHER_RGB)]:  # the pusher is drawn last, on top
            d = sdf(px, py, b.pos[j], b.angle[j], b.half[j], b.radius[j])
            near_body |= np.abs(d) <= margin
            expected[d < -margin] = rgb
        expected[near_body] = -1
        expected[[0, -1], :] = WALL_RGB
        expected[:, [0, -1]] = WALL_RGB
        clear = (expected >= 0).all(-1)
        assert clear.mean() > 0.8  # nearly every pixel is checked
        diff = np.abs(image - expected)[clear]
        assert diff.max() <= 1, (i, np.argwhere(np.abs(image - expected).max(-1) > 1)[:5])


def test_vmap_renders_a_batch_like_one_at_a_time(env, host):
    """``vmap(render_image)`` over a batch equals rendering each env alone."""
    batch = jax.tree.map(lambda x: x[:8], host)
    images = np.asarray(renderer(env, 64, batched=True)(batch))
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8
    for i in range(8):
        np.testing.assert_array_equal(images[i], renderer(env, 64)(at(host, i)))
    assert len({img.tobytes() for img in images}) == 8  # distinct states, distinct images
