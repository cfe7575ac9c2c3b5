"""Top-down RGB camera for the tabletop, in JAX: one image per env, ``vmap`` for a batch.

Every pixel is shaded from the exact geometry the physics uses (signed distance to each
rounded box), with a one-pixel soft edge for anti-aliasing, so what the camera shows is what
collides. Image row 0 is the far edge of the table (+y), column 0 its left edge (-x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.envs.tabletop import tasks as T

TABLE_RGB = np.array([236, 231, 220], np.float32)
WALL_RGB = np.array([70, 72, 80], np.float32)
PUSHER_RGB = np.array([45, 45, 50], np.float32)
#: zone fill: this fraction of the zone's colour over the table
ZONE_TINT = 0.35
#: wall band drawn along the image border, in pixels
BORDER_PX = 1


def pixel_centres(size: int, table_half: float) -> tuple[jax.Array, jax.Array]:
    """World coordinates ``(x, y)`` of every pixel centre, each ``[size, size]``."""
    c = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
    x = jnp.broadcast_to(c[None, :] * table_half, (size, size))
    y = jnp.broadcast_to(-c[:, None] * table_half, (size, size))
    return x, y


def rounded_box_sdf(px, py, cx, cy, angle, hx, hy, r):
    """Signed distance from points ``p`` to a rounded box (negative inside)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    dx, dy = px - cx, py - cy
    u = jnp.abs(dx * c + dy * s) - hx
    v = jnp.abs(-dx * s + dy * c) - hy
    outside = jnp.sqrt(jnp.maximum(u, 0.0) ** 2 + jnp.maximum(v, 0.0) ** 2)
    return outside + jnp.minimum(jnp.maximum(u, v), 0.0) - r


def render_table(physics, size: int, table_half: float = 1.0) -> jax.Array:
    """RGB image ``[size, size, 3]`` uint8 of one tabletop physics state."""
    from anyskill.envs.tabletop.env import ZONE_HALF

    px, py = pixel_centres(size, table_half)
    pixel = 2.0 * table_half / size
    img = jnp.broadcast_to(jnp.asarray(TABLE_RGB), (size, size, 3))
    colours = jnp.asarray(T.COLOUR_RGB, jnp.float32)

    def paint(img, sdf, rgb):
        alpha = jnp.clip(0.5 - sdf / pixel, 0.0, 1.0)[..., None]
        return img * (1.0 - alpha) + alpha * rgb

    for i in range(len(T.COLOURS)):
        z = physics.zones[i]
        sdf = rounded_box_sdf(px, py, z[0], z[1], 0.0, ZONE_HALF, ZONE_HALF, 0.0)
        tint = (1.0 - ZONE_TINT) * jnp.asarray(TABLE_RGB) + ZONE_TINT * colours[i]
        img = paint(img, sdf, tint)
    b = physics.bodies
    for k in range(physics.colour.shape[-1]):
        sdf = rounded_box_sdf(
            px,
            py,
            b.pos[k + 1, 0],
            b.pos[k + 1, 1],
            b.angle[k + 1],
            b.half[k + 1, 0],
            b.half[k + 1, 1],
            b.radius[k + 1],
        )
        sdf = jnp.where(physics.colour[k] >= 0, sdf, jnp.inf)
        img = paint(img, sdf, colours[jnp.maximum(physics.colour[k], 0)])
    sdf = rounded_box_sdf(px, py, b.pos[0, 0], b.pos[0, 1], 0.0, 0.0, 0.0, b.radius[0])
    img = paint(img, sdf, jnp.asarray(PUSHER_RGB))
    edge = jnp.arange(size)
    border = (edge < BORDER_PX) | (edge >= size - BORDER_PX)
    border = border[:, None] | border[None, :]
    img = jnp.where(border[..., None], jnp.asarray(WALL_RGB), img)
    return jnp.round(img).astype(jnp.uint8)
