"""Planar rigid-body contact for top-down tabletop pushing, in pure JAX.

Why not a general 2-D engine: the scene is tiny (a pusher, at most four objects, four walls)
and must step ~10^5 times per second on two CPU cores under ``vmap``. ``jax2d`` measured on
this machine (``benchmarks/jax2d_study.py``, results in BENCHMARKS.md) spends its time on
fixed-size slot arrays, joints, thrusters and gravity-oriented impulse solving that this scene
never uses. What it needs fits here: every body is a *rounded box* (a core rectangle with
half extents ``half`` swept by a disc of ``radius``; a disc is a box of zero extent), contact
is found with the separating-axis test, and constraints are solved with position-based
dynamics (Müller et al., "Position Based Dynamics", 2007; the rigid-body form of Müller et
al., "Detailed Rigid Body Simulation with Extended Position Based Dynamics", 2020), which is
unconditionally stable and keeps bodies apart with a few Gauss-Seidel sweeps.

Conventions: positions in table units (the table is ``[-table_half, table_half]^2``), angles
in radians, one *substep* of ``dt`` seconds. Body 0 is the pusher; its velocity is set from
the action every substep (a velocity-servoed end-effector), but it is still a body with
mass, so a wall always wins over it and objects can push back. Walls are static half-planes.

Layout for speed on CPU: contacts are detected once per substep for all candidate pairs at
once (arrays with a trailing *contact* axis), then a few Jacobi sweeps solve the linearised
contact constraints with per-body averaging; bodies are gathered into contacts and
corrections scattered back with small constant incidence matrices (a batched matmul, which
XLA:CPU runs far faster than gathers). A final exact wall projection ends every substep, so
nothing is ever left inside a wall. Loops over substeps and sweeps are ``fori_loop``s, so
compile time does not grow with them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Bodies:
    """Rigid bodies of one table (body 0 = pusher). Shapes ``[num_bodies]`` or ``[num_bodies, 2]``.

    pos:         [B, 2] centre position
    angle:       [B] orientation (rad)
    vel:         [B, 2] linear velocity (units/s)
    angvel:      [B] angular velocity (rad/s)
    half:        [B, 2] half extents of the core box along the body's own x and y axes
    radius:      [B] rounding radius (a disc: half = 0, radius = r)
    inv_mass:    [B] 1 / mass
    inv_inertia: [B] 1 / moment of inertia
    active:      [B] bool, inactive bodies take part in no contact (absent objects)
    """

    pos: jax.Array
    angle: jax.Array
    vel: jax.Array
    angvel: jax.Array
    half: jax.Array
    radius: jax.Array
    inv_mass: jax.Array
    inv_inertia: jax.Array
    active: jax.Array


@dataclasses.dataclass(frozen=True)
class PhysicsParams:
    """Static physical constants of the table."""

    table_half: float = 1.0
    """Walls are at +-table_half on both axes."""
    dt: float = 0.05
    """Substep length in seconds."""
    substeps: int = 2
    """Substeps per control step (control period = dt * substeps)."""
    iterations: int = 3
    """Gauss-Seidel sweeps over all contacts per substep."""
    friction_decel: float = 4.0
    """Coulomb friction with the table as a deceleration (units/s^2): a sliding object loses
    this much speed per second and stops exactly, so objects at rest stay at rest."""
    angular_friction_decel: float = 30.0
    """The same for spin (rad/s^2)."""


def box_inertia(mass, half, radius):
    """Moment of inertia of a rounded box, approximated by the rectangle that bounds it."""
    w = 2.0 * (half[..., 0] + radius)
    h = 2.0 * (half[..., 1] + radius)
    return mass * (w**2 + h**2) / 12.0


# ---- geometry on arrays with a trailing contact axis -------------------------------------------


def _axes(b: dict):
    # cos/sin come precomputed per body: XLA duplicates cheap elementwise ops into every
    # fusion that consumes them, and recomputing them per contact dominated detection.
    return (b["c"], b["s"]), (-b["s"], b["c"])


def support_radius(hx, hy, r, e1, e2, ux, uy):
    """Half-width of a rounded box projected on the unit axis ``u`` (its support radius)."""
    return hx * jnp.abs(ux * e1[0] + uy * e1[1]) + hy * jnp.abs(ux * e2[0] + uy * e2[1]) + r


def _soft_sign(z):
    # A smooth sign: a face lying flat against the contact normal (z ~ 0) contributes its
    # middle rather than one corner picked by rounding, so resting contact does not jitter.
    # Piecewise linear rather than tanh: no transcendental in the innermost loop.
    return jnp.clip(z * 20.0, -1.0, 1.0)


def _support(x, y, hx, hy, r, e1, e2, nx, ny):
    """Point of a rounded box farthest along the unit direction ``n`` (smoothed at faces)."""
    s1 = _soft_sign(nx * e1[0] + ny * e1[1]) * hx
    s2 = _soft_sign(nx * e2[0] + ny * e2[1]) * hy
    return x + s1 * e1[0] + s2 * e2[0] + r * nx, y + s1 * e1[1] + s2 * e2[1] + r * ny


def _closest_on_core(x, y, hx, hy, e1, e2, px, py):
    """Closest point to ``p`` on a core box (the rectangle without its rounding)."""
    dx, dy = px - x, py - y
    a1 = jnp.clip(dx * e1[0] + dy * e1[1], -hx, hx)
    a2 = jnp.clip(dx * e2[0] + dy * e2[1], -hy, hy)
    return x + a1 * e1[0] + a2 * e2[0], y + a1 * e1[1] + a2 * e2[1]


def pair_contact(a: dict, b: dict):
    """Contact between rounded boxes ``a`` and ``b`` (dicts of equal-shape arrays).

    Separating-axis test over the four face axes and the two closest-point axes (core of one
    body to the centre of the other). For disc-disc and box-disc pairs the closest-point axis
    is the exact contact normal; for box-box pairs the face axes are (SAT). Any candidate axis
    is a valid separating direction, so the minimum over a superset stays correct.
    Returns ``(depth, nx, ny, cx, cy)``: depth (> 0 when overlapping), unit normal from ``a``
    to ``b`` and the contact point, midway between the two bodies' deepest points.
    """
    ea1, ea2 = _axes(a)
    eb1, eb2 = _axes(b)
    dx, dy = b["x"] - a["x"], b["y"] - a["y"]
    qx, qy = _closest_on_core(a["x"], a["y"], a["hx"], a["hy"], ea1, ea2, b["x"], b["y"])
    px, py = _closest_on_core(b["x"], b["y"], b["hx"], b["hy"], eb1, eb2, a["x"], a["y"])
    cands = [(ea1, None), (ea2, None), (eb1, None), (eb2, None)]
    for vx, vy in ((b["x"] - qx, b["y"] - qy), (px - a["x"], py - a["y"])):
        norm = jnp.sqrt(vx * vx + vy * vy)
        ok = norm > 1e-6  # centre inside the other's core: this axis is undefined, skip it
        safe = jnp.where(ok, norm, 1.0)
        cands.append(((vx / safe, vy / safe), ok))
    depth = nx = ny = None
    for (ux, uy), ok in cands:
        sep = dx * ux + dy * uy
        sign = jnp.where(sep >= 0.0, 1.0, -1.0)
        overlap = (
            support_radius(a["hx"], a["hy"], a["r"], ea1, ea2, ux, uy)
            + support_radius(b["hx"], b["hy"], b["r"], eb1, eb2, ux, uy)
            - jnp.abs(sep)
        )
        if ok is not None:
            overlap = jnp.where(ok, overlap, jnp.inf)
        if depth is None:
            depth, nx, ny = overlap, ux * sign, uy * sign
        else:
            better = overlap < depth
            depth = jnp.where(better, overlap, depth)
            nx = jnp.where(better, ux * sign, nx)
            ny = jnp.where(better, uy * sign, ny)
    sax, say = _support(a["x"], a["y"], a["hx"], a["hy"], a["r"], ea1, ea2, nx, ny)
    sbx, sby = _support(b["x"], b["y"], b["hx"], b["hy"], b["r"], eb1, eb2, -nx, -ny)
    depth = jnp.where(jnp.logical_and(a["on"], b["on"]), depth, -jnp.inf)
    return depth, nx, ny, 0.5 * (sax + sbx), 0.5 * (say + sby)


#: The four walls as inward unit normals: a point p is on the table side when p.n >= -half.
WALLS = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], np.float32)


def wall_contact(b: dict, nx, ny, table_half: float):
    """Penetration of body ``b`` into the wall with inward normal ``n``, and the contact point.

    The depth uses the exact support radius; the contact point (only a lever arm for the
    solver) uses the face-smoothed support, so resting contact does not jitter.
    """
    e1, e2 = _axes(b)
    reach = support_radius(b["hx"], b["hy"], b["r"], e1, e2, nx, ny)
    depth = -table_half - (b["x"] * nx + b["y"] * ny) + reach
    sx, sy = _support(b["x"], b["y"], b["hx"], b["hy"], b["r"], e1, e2, -nx, -ny)
    return jnp.where(b["on"], depth, -jnp.inf), sx, sy


# ---- the contact graph: constant incidence matrices --------------------------------------------


@functools.cache
def contact_graph(num_bodies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Incidence of every candidate contact: all body pairs, then every body against each wall.

    Returns ``(gather_a, gather_b, wall_normals)``: ``gather_a``/``gather_b`` are
    ``[num_bodies + 1, C]`` one-hot columns selecting the two bodies of contact ``c`` (index
    ``num_bodies`` is the immovable world, body ``a`` of every wall contact), and
    ``wall_normals`` ``[C, 2]`` the wall's inward normal (zero for pair contacts).
    """
    pairs = list(itertools.combinations(range(num_bodies), 2))
    walls = [(num_bodies, i, w) for i in range(num_bodies) for w in range(len(WALLS))]
    c = len(pairs) + len(walls)
    ga = np.zeros((num_bodies + 1, c), np.float32)
    gb = np.zeros((num_bodies + 1, c), np.float32)
    normals = np.zeros((c, 2), np.float32)
    for k, (i, j) in enumerate(pairs):
        ga[i, k] = gb[j, k] = 1.0
    for k, (world, i, w) in enumerate(walls, start=len(pairs)):
        ga[world, k] = gb[i, k] = 1.0
        normals[k] = WALLS[w]
    return ga, gb, normals


def _fields(bodies: Bodies, x, y, th) -> dict:
    return dict(
        x=x,
        y=y,
        c=jnp.cos(th),
        s=jnp.sin(th),
        hx=bodies.half[..., 0],
        hy=bodies.half[..., 1],
        r=bodies.radius,
        im=bodies.inv_mass,
        ii=bodies.inv_inertia,
        on=bodies.active,
    )


def detect(bodies: Bodies, x, y, th, table_half: float):
    """All candidate contacts of the configuration ``(x, y, th)``: arrays over the contact axis.

    Returns ``(depth, nx, ny, rax, ray, rbx, rby)``: depth (<= 0: none), normal from body a to
    body b, and the lever arms from each body's centre to the contact point.
    """
    n = bodies.angle.shape[-1]
    num_pairs = n * (n - 1) // 2
    ga, gb, normals = contact_graph(n)
    ga_p, gb_p = ga[:n, :num_pairs], gb[:n, :num_pairs]
    f = _fields(bodies, x, y, th)
    on = f.pop("on").astype(jnp.float32)
    a = {k: v @ ga_p for k, v in f.items()}
    b = {k: v @ gb_p for k, v in f.items()}
    a["on"], b["on"] = (on @ ga_p) > 0.5, (on @ gb_p) > 0.5
    depth_p, nx_p, ny_p, cx, cy = pair_contact(a, b)
    # Walls: every body against each of the four walls, bodies repeated per wall.
    gw = gb[:n, num_pairs:]
    w = {k: v @ gw for k, v in f.items()}
    w["on"] = (on @ gw) > 0.5
    wnx, wny = jnp.asarray(normals[num_pairs:, 0]), jnp.asarray(normals[num_pairs:, 1])
    depth_w, sx, sy = wall_contact(w, wnx, wny, table_half)
    depth = jnp.concatenate([depth_p, depth_w])
    nx = jnp.concatenate([nx_p, wnx])
    ny = jnp.concatenate([ny_p, wny])
    rax = jnp.concatenate([cx - a["x"], jnp.zeros_like(sx)])
    ray = jnp.concatenate([cy - a["y"], jnp.zeros_like(sy)])
    rbx = jnp.concatenate([cx - b["x"], sx - w["x"]])
    rby = jnp.concatenate([cy - b["y"], sy - w["y"]])
    return depth, nx, ny, rax, ray, rbx, rby


def _out_of_walls(f: dict, table_half: float):
    # A translation along one wall's normal does not change the depth into the perpendicular
    # walls, so after the four walls none is left.
    x, y = f["x"], f["y"]
    for nx, ny in WALLS.tolist():
        depth, _, _ = wall_contact(dict(f, x=x, y=y), nx, ny, table_half)
        push = jnp.where(depth > 0.0, depth, 0.0)
        x, y = x + push * nx, y + push * ny
    return x, y


def _project(bodies: Bodies, x, y, th, table_half: float):
    """Exact final projections that end every substep, translation only:

    1. every body moves out of every wall;
    2. the pusher backs out of every object (objects held fixed): an end-effector cannot
       squeeze objects into each other or into a wall, it stalls, as a compliant arm would;
    3. the pusher moves out of the walls again. Only when the gap between an object and a
       wall is narrower than the pusher can step 3 leave the pusher touching that object.
    """
    f = _fields(bodies, x, y, th)
    x, y = _out_of_walls(f, table_half)
    n = bodies.angle.shape[-1]
    pusher = {k: v[0] for k, v in f.items()} | {"x": x[0], "y": y[0]}
    for j in range(1, n):
        other = {k: v[j] for k, v in f.items()} | {"x": x[j], "y": y[j]}
        depth, nx, ny, _, _ = pair_contact(pusher, other)
        push = jnp.where(depth > 0.0, depth, 0.0)
        pusher = dict(pusher, x=pusher["x"] - push * nx, y=pusher["y"] - push * ny)
    px, py = _out_of_walls(pusher, table_half)
    return x.at[0].set(px), y.at[0].set(py)


def substep(bodies: Bodies, pusher_vel: jax.Array, params: PhysicsParams) -> Bodies:
    """One substep: predict, detect, Jacobi-solve contacts, wall projection, friction."""
    h = params.dt
    n = bodies.angle.shape[-1]
    ga, gb, _ = contact_graph(n)
    # gather: body displacements [3, n+1] -> at both ends of every contact [3, 2C];
    # scatter: contact impulses at both ends [3, 2C] -> bodies [3, n+1], a-ends with minus.
    gather = jnp.asarray(np.concatenate([ga, gb], axis=1))
    scatter = jnp.asarray(np.concatenate([-ga, gb], axis=1).T)
    vel = bodies.vel.at[0].set(pusher_vel)
    x0, y0, th0 = bodies.pos[:, 0], bodies.pos[:, 1], bodies.angle
    x = x0 + h * vel[:, 0]
    y = y0 + h * vel[:, 1]
    th = th0 + h * bodies.angvel
    depth0, nx, ny, rax, ray, rbx, rby = detect(bodies, x, y, th, params.table_half)
    # Inactive pairs report -inf; keep them finite so 0 * depth stays 0 in the sweeps.
    depth0 = jnp.maximum(depth0, -1.0)
    world = jnp.zeros((1,), jnp.float32)
    im = jnp.concatenate([bodies.inv_mass, world])
    ii = jnp.concatenate([bodies.inv_inertia, world])
    im_ab = im @ gather
    ii_ab = ii @ gather
    n2x, n2y = jnp.concatenate([nx, nx]), jnp.concatenate([ny, ny])
    r2x, r2y = jnp.concatenate([rax, rbx]), jnp.concatenate([ray, rby])
    cross = r2x * n2y - r2y * n2x
    num_c = depth0.shape[-1]
    w = (im_ab + ii_ab * cross**2)[:num_c] + (im_ab + ii_ab * cross**2)[num_c:]
    touching = (depth0 > 0.0).astype(jnp.float32)
    # Constraint averaging (Müller et al. 2007, sec. 3.5): a body in k contacts moves by the
    # mean, not the sum, of their corrections, so Jacobi sweeps do not overshoot.
    count = jnp.maximum(jnp.concatenate([touching, touching]) @ jnp.abs(scatter), 1.0)
    inv_w = touching / jnp.maximum(w, 1e-9)

    def displacement(lam):
        lam2 = jnp.concatenate([lam, lam])
        impulse = jnp.stack([lam2 * im_ab * n2x, lam2 * im_ab * n2y, lam2 * ii_ab * cross])
        return (impulse @ scatter) / count  # [3, n+1]

    def sweep(_, lam):
        # Linearised residual depth: how far the current displacements moved each contact
        # point (translation + rotation about the centre) along n, b-end minus a-end.
        dx, dy, dth = displacement(lam) @ gather
        move = (dx - dth * r2y) * n2x + (dy + dth * r2x) * n2y
        residual = depth0 - (move[num_c:] - move[:num_c])
        return jnp.maximum(lam + residual * inv_w, 0.0)

    lam = jax.lax.fori_loop(0, params.iterations, sweep, jnp.zeros_like(depth0), unroll=True)
    dx, dy, dth = displacement(lam)[:, :n]
    th = th + dth
    x, y = _project(bodies, x + dx, y + dy, th, params.table_half)
    pos = jnp.stack([x, y], axis=-1)
    new_vel = (pos - bodies.pos) / h
    new_angvel = (th - th0) / h
    # Coulomb friction with the table (not on the servoed pusher): lose friction_decel * h of
    # speed, never reversing. Written per component: XLA:CPU reduces a size-2 axis slowly.
    speed = jnp.sqrt(new_vel[:, 0] ** 2 + new_vel[:, 1] ** 2)
    keep = jnp.maximum(0.0, 1.0 - params.friction_decel * h / jnp.maximum(speed, 1e-9))
    keep = keep.at[0].set(1.0)
    spin = jnp.abs(new_angvel)
    spin_keep = jnp.maximum(0.0, 1.0 - params.angular_friction_decel * h / jnp.maximum(spin, 1e-9))
    return bodies.replace(
        pos=pos, angle=th, vel=new_vel * keep[:, None], angvel=new_angvel * spin_keep
    )


def control_step(bodies: Bodies, pusher_vel: jax.Array, params: PhysicsParams) -> Bodies:
    """``params.substeps`` substeps with the pusher commanded to ``pusher_vel`` (units/s)."""
    return jax.lax.fori_loop(
        0, params.substeps, lambda _, b: substep(b, pusher_vel, params), bodies, unroll=True
    )


def penetrations(bodies: Bodies, table_half: float) -> tuple[jax.Array, jax.Array]:
    """Deepest body-body and body-wall penetration (0 when nothing overlaps), for tests."""
    depth, *_ = detect(bodies, bodies.pos[:, 0], bodies.pos[:, 1], bodies.angle, table_half)
    num_pairs = len(list(itertools.combinations(range(bodies.angle.shape[-1]), 2)))
    pair = jnp.maximum(jnp.max(depth[:num_pairs]), 0.0)
    wall = jnp.maximum(jnp.max(depth[num_pairs:]), 0.0)
    return pair, wall
