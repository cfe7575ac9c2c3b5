"""What is on the tabletop, shared by the env, the task families and the camera: the
object vocabulary (colours, shapes and their collision geometry), the zones, the pusher,
and geometric queries on bodies (support radius, surface gap, inside a zone).

This module knows nothing about tasks: the families (``families/``) and the env build on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.envs.tabletop.physics import Bodies, pair_contact, support_radius

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = np.array([[214, 48, 49], [46, 160, 67], [38, 98, 217], [232, 185, 20]], np.uint8)
SHAPES = ("block", "disc", "bar")
#: (half extent x, half extent y, rounding radius) of each shape's collision body
SHAPE_GEOMETRY = np.array([[0.085, 0.085, 0.015], [0.0, 0.0, 0.1], [0.13, 0.045, 0.015]])
#: radius of the disc that bounds each shape (for spawning and gather distances)
SHAPE_BOUND = np.hypot(SHAPE_GEOMETRY[:, 0], SHAPE_GEOMETRY[:, 1]) + SHAPE_GEOMETRY[:, 2]

#: zones sit at (+-ZONE_CENTRE, +-ZONE_CENTRE), one per colour, squares of half-width ZONE_HALF
ZONE_CENTRE = 0.72
ZONE_HALF = 0.2
PUSHER_RADIUS = 0.06


def in_zone(p: jax.Array, z: jax.Array) -> jax.Array:
    """Whether points ``p [..., 2]`` lie inside the square zones centred at ``z [..., 2]``."""
    return (jnp.abs(p[..., 0] - z[..., 0]) < ZONE_HALF) & (
        jnp.abs(p[..., 1] - z[..., 1]) < ZONE_HALF
    )


def body_reach(b: Bodies, k, ux, uy) -> jax.Array:
    """Support radius of body ``k`` along the unit direction ``u`` (how far it extends)."""
    c, s = jnp.cos(b.angle[k]), jnp.sin(b.angle[k])
    return support_radius(b.half[k, 0], b.half[k, 1], b.radius[k], (c, s), (-s, c), ux, uy)


def surface_gap(b: Bodies, i, j) -> jax.Array:
    """Distance between the surfaces of bodies ``i`` and ``j`` (negative when overlapping)."""

    def body(k):
        return dict(
            x=b.pos[k, 0],
            y=b.pos[k, 1],
            c=jnp.cos(b.angle[k]),
            s=jnp.sin(b.angle[k]),
            hx=b.half[k, 0],
            hy=b.half[k, 1],
            r=b.radius[k],
            on=jnp.asarray(True),
        )

    depth, *_ = pair_contact(body(i), body(j))
    return -depth
