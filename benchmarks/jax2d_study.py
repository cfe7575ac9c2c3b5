"""jax2d study: batched throughput, phase costs and contact quality of a top-down pushing scene.

Scene (units of 0.1 m): a 6 x 6 table enclosed by 4 static walls, two boxes and one disc that
slide with Coulomb ground friction (jax2d has none, so we apply it ourselves every substep),
gravity 0, and a small disc pusher whose velocity is set from the action (10 Hz control; one
control step = ``substeps`` jax2d steps of dt = 0.1 / substeps).

Configs are spec strings: a base (``default`` = jax2d's StaticSimParams(), ``trim`` = slots cut
to the scene: 6 polygons, 2 circles, 1 joint, 1 thruster) followed by dash-separated knobs:
``it<n>`` solver iterations (default 10), ``ss<n>`` substeps per control step (default 6,
i.e. jax2d's dt = 1/60), ``b<n>`` solver batch size (default 16), ``nows`` no warm starting,
``bg<pct>`` Baumgarte position-correction factor in % (jax2d: 20), ``pd<n>`` pusher density
(default 10: pusher mass ~ object mass), ``kin`` for an infinite-mass pusher (default: a
dynamic pusher whose velocity is re-imposed every substep).

Sections: ``throughput`` (jit(scan(vmap(control_step))) over --control-steps, best of
--repeats, compile time separate), ``phases`` (each engine phase jitted and timed on its own),
``profile`` (per-op time of one batched substep from a jax.profiler trace), ``check`` (100 control steps of random or
object-seeking actions: interpenetration depths, escapes, NaNs). Results are merged into the
JSON file, so the study can be run in short pieces.

    python benchmarks/jax2d_study.py --sections throughput --configs default trim-it4-ss3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import machine_info

try:
    import chex  # noqa: F401
except ImportError:
    # jax2d 1.0.2's engine.py imports chex for a single assert_shape call but does not declare
    # the dependency; a stand-in keeps this study free of environment changes.
    _chex = types.ModuleType("chex")

    def _assert_shape(x: Any, shape: tuple[int, ...]) -> None:
        assert tuple(x.shape) == tuple(shape), (x.shape, shape)

    _chex.assert_shape = _assert_shape  # type: ignore[attr-defined]
    sys.modules["chex"] = _chex

from jax2d.engine import PhysicsEngine, clip_state, create_empty_sim  # noqa: E402
from jax2d.maths import rmat  # noqa: E402
from jax2d.scene import add_circle_to_scene, add_rectangle_to_scene  # noqa: E402
from jax2d.sim_state import SimParams, SimState, StaticSimParams  # noqa: E402

# ---------------------------------------------------------------- scene constants (0.1 m units)
HALF = 3.0  # table interior is [-HALF, HALF]^2
WALL = 1.0  # wall thickness
BOX_DIMS = ((0.8, 0.8), (1.0, 0.6))
DISC_R = 0.4
PUSHER_R = 0.15
MAX_SPEED = 3.0  # pusher speed at |action| = 1 (0.3 m/s)
GROUND_MU = 0.3
GRAVITY = 98.1  # 9.81 m/s^2 in 0.1 m units; only used for ground friction (top-down)
PUSHER_DENSITY = 10.0  # pusher mass ~ object mass; see the study notes for heavier pushers
CONTROL_DT = 0.1
N_WALLS = 4
BOX_SLOTS = (4, 5)  # polygon slots of the boxes (walls take 0..3, as jax2d's fixated slots)
DISC, PUSHER = 0, 1  # circle slots


@dataclass(frozen=True)
class Config:
    spec: str
    trimmed: bool
    iters: int = 10
    substeps: int = 6
    batch: int = 16
    warm: bool = True
    kinematic: bool = False
    pusher_density: float = PUSHER_DENSITY
    baumgarte: float = 0.2  # jax2d's SimParams.baumgarte_coefficient_collision

    @staticmethod
    def parse(spec: str) -> Config:
        base, *knobs = spec.split("-")
        if base not in ("default", "trim"):
            raise ValueError(f"config must start with default or trim: {spec}")
        kw: dict[str, Any] = {"trimmed": base == "trim"}
        for k in knobs:
            if m := re.fullmatch(r"(it|ss|b)(\d+)", k):
                kw[{"it": "iters", "ss": "substeps", "b": "batch"}[m[1]]] = int(m[2])
            elif m := re.fullmatch(r"bg(\d+)", k):
                kw["baumgarte"] = int(m[1]) / 100
            elif m := re.fullmatch(r"pd(\d+)", k):
                kw["pusher_density"] = float(m[1])
            elif k == "nows":
                kw["warm"] = False
            elif k == "kin":
                kw["kinematic"] = True
            else:
                raise ValueError(f"unknown knob {k!r} in {spec}")
        return Config(spec=spec, **kw)

    def static(self) -> StaticSimParams:
        knobs = dict(
            num_solver_iterations=self.iters,
            solver_batch_size=self.batch,
            do_warm_starting=self.warm,
        )
        if not self.trimmed:
            return StaticSimParams(**knobs)
        # jax2d indexes slot 0 of the joint and thruster arrays unconditionally, so 1 is the
        # minimum; polygons: 4 walls + 2 boxes; circles: disc + pusher. The collision code
        # hard-codes 4 vertices, so max_polygon_vertices cannot go below 4.
        return StaticSimParams(
            num_polygons=N_WALLS + len(BOX_DIMS),
            num_circles=2,
            num_joints=1,
            num_thrusters=1,
            max_polygon_vertices=4,
            num_static_fixated_polys=N_WALLS,
            **knobs,
        )

    def params(self) -> SimParams:
        return SimParams(
            dt=CONTROL_DT / self.substeps, baumgarte_coefficient_collision=self.baumgarte
        )


class PushScene:
    """Builds states and the control step for one Config."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.ssp = cfg.static()
        self.params = cfg.params()
        self.engine = PhysicsEngine(self.ssp)
        self.template = self._template()
        n_act = self.ssp.num_joints + self.ssp.num_thrusters
        self.zero_actions = jnp.zeros(n_act)  # motors/thrusters unused: slots stay inactive
        # Angular ground friction: a uniformly pressed disc of radius R has friction torque
        # (2/3) mu m g R and inertia m R^2 / 2, so it decelerates at (4/3) mu g / R; boxes use
        # the radius of the disc of equal area. Decelerations are per slot, 0 for unused slots.
        lin = np.zeros(self.ssp.num_polygons)
        ang = np.zeros(self.ssp.num_polygons)
        for slot, (w, h) in zip(BOX_SLOTS, BOX_DIMS, strict=True):
            lin[slot] = GROUND_MU * GRAVITY
            ang[slot] = 4 / 3 * GROUND_MU * GRAVITY / np.sqrt(w * h / np.pi)
        clin = np.zeros(self.ssp.num_circles)
        cang = np.zeros(self.ssp.num_circles)
        clin[DISC] = GROUND_MU * GRAVITY
        cang[DISC] = 4 / 3 * GROUND_MU * GRAVITY / DISC_R
        self.decel = tuple(jnp.asarray(a, jnp.float32) for a in (lin, ang, clin, cang))

    def _template(self) -> SimState:
        ssp = self.ssp
        st = create_empty_sim(ssp, add_floor=False, add_walls_and_ceiling=False)
        span = 2 * HALF + 2 * WALL
        off = HALF + WALL / 2
        for pos, dims in (
            ((0.0, off), (span, WALL)),
            ((0.0, -off), (span, WALL)),
            ((-off, 0.0), (WALL, span)),
            ((off, 0.0), (WALL, span)),
        ):
            st, _ = add_rectangle_to_scene(st, ssp, jnp.array(pos), jnp.array(dims), fixated=True)
        for dims in BOX_DIMS:
            st, _ = add_rectangle_to_scene(st, ssp, jnp.zeros(2), jnp.array(dims))
        st, _ = add_circle_to_scene(st, ssp, jnp.zeros(2), DISC_R)
        st, _ = add_circle_to_scene(
            st,
            ssp,
            jnp.zeros(2),
            PUSHER_R,
            density=self.cfg.pusher_density,
            fixated=self.cfg.kinematic,
        )
        return st.replace(gravity=jnp.zeros(2))

    def reset(self, key: jax.Array) -> SimState:
        """Objects and pusher at 4 jittered, shuffled table quadrants (never overlapping)."""
        k1, k2, k3 = jax.random.split(key, 3)
        corners = jnp.array([[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]])
        pos = jax.random.permutation(k1, corners) + jax.random.uniform(k2, (4, 2), None, -0.4, 0.4)
        rot = jax.random.uniform(k3, (2,), None, 0.0, jnp.pi)
        st = self.template
        p, c = st.polygon, st.circle
        boxes = jnp.array(BOX_SLOTS)
        return st.replace(
            polygon=p.replace(
                position=p.position.at[boxes].set(pos[:2]),
                rotation=p.rotation.at[boxes].set(rot),
            ),
            circle=c.replace(position=c.position.at[jnp.array([DISC, PUSHER])].set(pos[2:])),
        )

    def substep(self, st: SimState, vel: jax.Array) -> SimState:
        with jax.named_scope("ours"):
            dt = self.params.dt
            lin, ang, clin, cang = self.decel
            p, c = st.polygon, st.circle
            st = st.replace(
                polygon=p.replace(
                    velocity=_coulomb_vec(p.velocity, lin * dt),
                    angular_velocity=_coulomb_scalar(p.angular_velocity, ang * dt),
                ),
                circle=c.replace(
                    # The pusher's velocity is the command, re-imposed every substep.
                    velocity=_coulomb_vec(c.velocity, clin * dt).at[PUSHER].set(vel),
                    angular_velocity=_coulomb_scalar(c.angular_velocity, cang * dt),
                ),
            )
        st = self.engine.step(st, self.params, self.zero_actions)[0]
        if self.cfg.kinematic:
            # An infinite-mass pusher is not stopped by the (also infinite-mass) walls.
            lim = HALF - PUSHER_R
            c = st.circle
            st = st.replace(
                circle=c.replace(
                    position=c.position.at[PUSHER].set(jnp.clip(c.position[PUSHER], -lim, lim))
                )
            )
        return st

    def control_step(self, st: SimState, action: jax.Array) -> SimState:
        vel = jnp.clip(action, -1.0, 1.0) * MAX_SPEED

        def body(s: SimState, _: None) -> tuple[SimState, None]:
            return self.substep(s, vel), None

        st, _ = jax.lax.scan(body, st, None, length=self.cfg.substeps)
        return st


def _coulomb_vec(v: jax.Array, dv: jax.Array) -> jax.Array:
    """Reduce |v| by dv (per row) without reversing it: kinetic Coulomb friction."""
    speed = jnp.linalg.norm(v, axis=-1, keepdims=True)
    return v * jnp.maximum(0.0, 1.0 - dv[:, None] / jnp.maximum(speed, 1e-9))


def _coulomb_scalar(w: jax.Array, dw: jax.Array) -> jax.Array:
    return w * jnp.maximum(0.0, 1.0 - dw / jnp.maximum(jnp.abs(w), 1e-9))


def _xla_flags() -> str:
    return os.environ.get("XLA_FLAGS", "")


def batched_reset(scene: PushScene, n: int, seed: int = 0) -> SimState:
    return jax.jit(jax.vmap(scene.reset))(jax.random.split(jax.random.PRNGKey(seed), n))


def random_actions(t: int, n: int, seed: int = 1) -> jax.Array:
    return jax.random.uniform(jax.random.PRNGKey(seed), (t, n, 2), None, -1.0, 1.0)


def time_compiled(
    fn: Callable[..., Any], args: tuple[Any, ...], repeats: int
) -> tuple[float, list[float], float]:
    """Compile (timed), one untimed warm-up call, then `repeats` timed calls.

    Returns (compile_s, wall times, cpu/wall of the best call: > 1 means XLA used both cores).
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    walls, cpu_ratio = [], 0.0
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(compiled(*args))
        w = time.perf_counter() - w0
        if not walls or w < min(walls):
            cpu_ratio = (time.process_time() - c0) / w
        walls.append(w)
    return compile_s, walls, cpu_ratio


# ---------------------------------------------------------------- sections
def run_throughput(cfg: Config, n: int, steps: int, repeats: int) -> dict[str, Any]:
    scene = PushScene(cfg)
    states = batched_reset(scene, n)
    actions = random_actions(steps, n)
    step = jax.vmap(scene.control_step)

    def rollout(s: SimState, acts: jax.Array) -> SimState:
        return jax.lax.scan(lambda c, a: (step(c, a), None), s, acts)[0]

    ndev = jax.device_count()
    if ndev > 1:
        # XLA:CPU runs this workload on one core (cpu/wall ~ 1); with
        # --xla_force_host_platform_device_count each host "device" takes a slice of the envs.
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("env",))
        P = jax.sharding.PartitionSpec
        rollout = jax.shard_map(
            rollout, mesh=mesh, in_specs=(P("env"), P(None, "env")), out_specs=P("env")
        )
    compile_s, walls, cpu = time_compiled(rollout, (states, actions), repeats)
    best = min(walls)
    return {
        "config": cfg.spec,
        "num_envs": n,
        "control_steps": steps,
        "substeps": cfg.substeps,
        "iters": cfg.iters,
        "compile_s": compile_s,
        "walls_s": walls,
        "steps_per_s": n * steps / best,
        "substeps_per_s": n * steps * cfg.substeps / best,
        "cpu_per_wall": cpu,
        "xla_flags": _xla_flags(),
        "devices": ndev,
    }


def run_phases(cfg: Config, n: int, reps: int, repeats: int) -> dict[str, Any]:
    """Time each engine phase alone: jit(scan over `reps` calls of vmap(phase)).

    The carry changes every call, so XLA cannot hoist the work out of the loop (solver parts
    may still hoist position-only terms, as engine.step's own solver loop may). Everything
    step() does that is not listed (gravity, motor/thruster slots, thruster positions) is the
    gap between the full substep and the sum of the parts.
    """
    scene = PushScene(cfg)
    eng, prm = scene.engine, scene.params
    # Start from settled, contact-rich states rather than the reset layout.
    st = batched_reset(scene, n)
    acts = random_actions(20, n)
    st = jax.jit(
        lambda s: jax.lax.scan(lambda c, a: (jax.vmap(scene.control_step)(c, a), None), s, acts)[0]
    )(st)
    manif = jax.jit(jax.vmap(eng.calculate_collision_manifolds))(st)
    vel = jnp.zeros((n, 2))

    def collide(s: SimState) -> SimState:
        rr, cr, cc = eng.calculate_collision_manifolds(s)
        # Positions do not change in this loop, so XLA would hoist the (position-only) SAT work
        # out of it; feeding a negligible function of the result back in keeps it inside.
        eps = 1e-9 * (rr.penetration.sum() + cr.penetration.sum() + cc.penetration.sum())
        return s.replace(
            polygon=s.polygon.replace(position=s.polygon.position + eps),
            circle=s.circle.replace(position=s.circle.position + eps),
            acc_rr_manifolds=rr,
            acc_cr_manifolds=cr,
            acc_cc_manifolds=cc,
        )

    def warm(carry: tuple) -> tuple:
        s, (rr, cr, cc) = carry
        s = eng.ws_cc_fn(eng.ws_cr_fn(eng.ws_rr_fn(s, rr), cr), cc)
        return eng.ws_j_fn(s), (rr, cr, cc)

    def solver_part(name: str) -> Callable[[tuple], tuple]:
        def f(carry: tuple) -> tuple:
            s, (rr, cr, cc) = carry
            if name == "joints":
                s = eng.j_fn(s, prm)
            elif name == "poly-poly":
                s, rr = eng.rr_fn(s, rr, prm)
            elif name == "circle-poly":
                s, cr = eng.cr_fn(s, cr, prm)
            else:
                s, cc = eng.cc_fn(s, cc, prm)
            return s, (rr, cr, cc)

        return f

    def solver_iteration(carry: tuple) -> tuple:
        # All four parts in one loop body, as engine.step runs them.
        for part in ("joints", "poly-poly", "circle-poly", "circle-circle"):
            carry = solver_part(part)(carry)
        return carry

    def integrate(s: SimState) -> SimState:
        p, c = s.polygon, s.circle
        s = s.replace(
            polygon=p.replace(
                position=p.position + p.velocity * prm.dt,
                rotation=p.rotation + p.angular_velocity * prm.dt,
            ),
            circle=c.replace(
                position=c.position + c.velocity * prm.dt,
                rotation=c.rotation + c.angular_velocity * prm.dt,
            ),
        )
        return clip_state(s, prm)

    def ours(s: SimState) -> SimState:
        # Our per-substep additions (ground friction, pusher command) without the engine step.
        lin, ang, clin, cang = scene.decel
        p, c = s.polygon, s.circle
        return s.replace(
            polygon=p.replace(
                velocity=_coulomb_vec(p.velocity, lin * prm.dt),
                angular_velocity=_coulomb_scalar(p.angular_velocity, ang * prm.dt),
            ),
            circle=c.replace(velocity=_coulomb_vec(c.velocity, clin * prm.dt).at[PUSHER].set(0.1)),
        )

    def full(s: SimState) -> SimState:
        return scene.substep(s, vel[0])

    def engine_step(s: SimState) -> SimState:
        return eng.step(s, prm, scene.zero_actions)[0]

    phases: list[tuple[str, Callable, Any, int]] = [
        ("full substep (engine.step + ours)", full, st, 1),
        ("engine.step", engine_step, st, 1),
        ("collision detection (manifolds)", collide, st, 1),
    ]
    if cfg.warm:
        phases.append(("warm starting", warm, (st, manif), 1))
    for part in ("joints", "poly-poly", "circle-poly", "circle-circle"):
        phases.append(
            (f"solver: {part} x{cfg.iters} iters", solver_part(part), (st, manif), cfg.iters)
        )
    phases += [
        (
            f"solver: all parts together x{cfg.iters} iters",
            solver_iteration,
            (st, manif),
            cfg.iters,
        ),
        ("Euler + clip_state", integrate, st, 1),
        ("ours: ground friction + pusher", ours, st, 1),
    ]

    rows = []
    for name, fn, arg, mult in phases:
        vf = jax.vmap(fn)

        def looped(a: Any, vf: Callable = vf) -> Any:
            return jax.lax.fori_loop(0, reps, lambda _, c: vf(c), a)

        compile_s, walls, _ = time_compiled(looped, (arg,), repeats)
        per_call = min(walls) / reps
        rows.append(
            {"phase": name, "ms_per_substep": 1e3 * per_call * mult, "compile_s": compile_s}
        )
    return {
        "config": cfg.spec,
        "num_envs": n,
        "reps": reps,
        "xla_flags": _xla_flags(),
        "rows": rows,
    }


def _op_kind(name: str) -> str:
    """Group XLA:CPU thunk names (``sort.91``, ``ynn_fusion.7``, ``bitcast_gather_fusion.3``)."""
    base = re.sub(r"\.\d+$", "", name)
    if base in ("sort", "dot", "dot_general", "ynn_fusion"):
        return base
    for word in ("scatter", "gather", "dynamic-update-slice", "copy", "concatenate"):
        if word in base:
            return f"other {word}"
    return "other fusion" if "fusion" in base else base


def run_profile(cfg: Config, n: int, calls: int = 3) -> dict[str, Any]:
    """Per-op time of one batched substep from a jax.profiler trace (XLA:CPU thunk events).

    Events are summed over XLA's worker threads; loop containers (``while``) are skipped so
    only leaf ops count. Tracing adds overhead per op, so read the split, not the absolute.
    """
    import tempfile

    from jax.profiler import ProfileData

    scene = PushScene(cfg)
    eng = scene.engine
    # engine.step reaches its phases through instance attributes, so wrapping them in named
    # scopes (without touching jax2d) tags every HLO op with the phase it came from.
    scopes = {
        "calculate_collision_manifolds": "collision detection",
        "ws_rr_fn": "warm starting",
        "ws_cr_fn": "warm starting",
        "ws_cc_fn": "warm starting",
        "ws_j_fn": "warm starting",
        "j_fn": "solver: joints",
        "rr_fn": "solver: poly-poly",
        "cr_fn": "solver: circle-poly",
        "cc_fn": "solver: circle-circle",
    }
    for attr, scope in scopes.items():
        setattr(eng, attr, _scoped(scope, getattr(eng, attr)))
    st = batched_reset(scene, n)
    vel = jnp.zeros((n, 2))
    f = jax.jit(jax.vmap(scene.substep)).lower(st, vel).compile()
    op_scope = {}
    for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?op_name="([^"]*)"', f.as_text(), re.M):
        # Scopes show up as ".../name/..." or, under vmap, as "vmap(name)".
        hit = [
            sc for sc in (*scopes.values(), "ours") if re.search(rf"[/(]{re.escape(sc)}[/)]", m[2])
        ]
        op_scope[m[1]] = (
            hit[-1] if hit else "rest of step (gravity, motor/thruster slots, Euler, clip)"
        )
    st = jax.block_until_ready(f(st, vel))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(calls):
                st = jax.block_until_ready(f(st, vel))
        pb = next(Path(d).rglob("*.xplane.pb"))
        prof = ProfileData.from_file(str(pb))
    ns: Counter[str] = Counter()
    count: Counter[str] = Counter()
    by_scope: Counter[str] = Counter()
    sort_by_scope: Counter[str] = Counter()
    for plane in prof.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                if ev.name.startswith(("ThunkExecutor", "while", "end:")):
                    continue
                k = _op_kind(ev.name)
                ns[k] += ev.duration_ns
                count[k] += 1
                sc = op_scope.get(ev.name, "unattributed")
                by_scope[sc] += ev.duration_ns
                if k == "sort":
                    sort_by_scope[sc] += ev.duration_ns
    total = sum(ns.values())
    rows = [
        {"kind": k, "ms": t / calls / 1e6, "share": t / total, "ops": count[k] / calls}
        for k, t in ns.most_common()
    ]
    scope_rows = [
        {
            "scope": k,
            "ms": t / calls / 1e6,
            "share": t / total,
            "sort_ms": sort_by_scope[k] / calls / 1e6,
        }
        for k, t in by_scope.most_common()
    ]
    return {
        "config": cfg.spec,
        "num_envs": n,
        "xla_flags": _xla_flags(),
        "rows": rows,
        "scopes": scope_rows,
    }


def _scoped(name: str, fn: Callable) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with jax.named_scope(name):
            return fn(*args, **kwargs)

    return wrapped


def _any_active(m: Any, mask: list[bool]) -> jax.Array:
    """Whether any manifold slot selected by `mask` is in contact (poly-poly slots hold 2)."""
    active = m.active.reshape(m.active.shape[0], -1).any(axis=1)
    return (active & jnp.asarray(mask)).any()


def run_check(cfg: Config, n: int, steps: int, policy: str) -> dict[str, Any]:
    """Roll out `steps` control steps and track contact quality after each of them."""
    scene = PushScene(cfg)
    eng = scene.engine

    # Classify every manifold slot by what it touches: wall (poly < 4), object, pusher.
    def kind_poly(i: int) -> str:
        return "wall" if i < N_WALLS else ("obj" if i in BOX_SLOTS else "unused")

    def kind_circ(i: int) -> str:
        return {DISC: "obj", PUSHER: "pusher"}.get(i, "unused")

    def cat(a: str, b: str) -> str:
        return "-".join(sorted((a, b)))

    rr_cat = [cat(kind_poly(int(a)), kind_poly(int(b))) for a, b in np.asarray(eng.poly_poly_pairs)]
    cr_cat = [
        cat(kind_circ(int(a)), kind_poly(int(b))) for a, b in np.asarray(eng.circle_poly_pairs)
    ]
    cc_cat = [
        cat(kind_circ(int(a)), kind_circ(int(b))) for a, b in np.asarray(eng.circle_circle_pairs)
    ]
    cats = ["obj-obj", "obj-wall", "obj-pusher", "pusher-wall"]

    def metrics(st: SimState) -> dict[str, jax.Array]:
        rr, cr, cc = eng.calculate_collision_manifolds(st)
        out = {}
        for name in cats:
            depth = [jnp.zeros(())]
            for m, cs, two in ((rr, rr_cat, True), (cr, cr_cat, False), (cc, cc_cat, False)):
                mask = np.array([c == name for c in cs])
                if mask.any():
                    pen = jnp.where(m.active, m.penetration, 0.0)
                    pen = pen.max(axis=1) if two else pen
                    depth.append(jnp.where(mask, pen, 0.0).max())
            out[f"pen {name}"] = jnp.max(jnp.stack(depth))
        # Geometric wall depth, independent of jax2d's manifolds: how far any part of an object
        # or the pusher reaches past the interior face of a wall.
        p, c = st.polygon, st.circle
        boxes = jnp.array(BOX_SLOTS)
        verts = jax.vmap(lambda pos, rot, v: pos + v @ rmat(rot).T)(
            p.position[boxes], p.rotation[boxes], p.vertices[boxes]
        )
        reach_obj = jnp.maximum(jnp.abs(verts).max(), (jnp.abs(c.position[DISC]) + DISC_R).max())
        out["geom wall depth obj"] = jnp.maximum(0.0, reach_obj - HALF)
        out["geom wall depth pusher"] = jnp.maximum(
            0.0, (jnp.abs(c.position[PUSHER]) + PUSHER_R).max() - HALF
        )
        centres = jnp.concatenate([p.position[boxes], c.position[DISC][None]])
        out["escaped"] = (jnp.abs(centres) > HALF).any()
        out["nonfinite"] = ~jnp.isfinite(jnp.concatenate([centres.ravel(), p.rotation])).all()
        out["pusher contact"] = jnp.stack(
            [
                _any_active(m, [x == "obj-pusher" for x in cs])
                for m, cs in ((rr, rr_cat), (cr, cr_cat), (cc, cc_cat))
            ]
        ).any()
        speeds = jnp.concatenate(
            [jnp.linalg.norm(p.velocity[boxes], axis=-1), jnp.linalg.norm(c.velocity[DISC])[None]]
        )
        out["max obj speed"] = speeds.max()
        return out

    def policy_fn(st: SimState, key: jax.Array, target: jax.Array) -> jax.Array:
        noise = jax.random.uniform(key, (2,), None, -1.0, 1.0)
        if policy == "random":
            return noise
        # "seek": drive at one object (and beyond it) to force pushes and wall pinning.
        objs = jnp.concatenate(
            [st.polygon.position[jnp.array(BOX_SLOTS)], st.circle.position[DISC][None]]
        )
        d = objs[target] - st.circle.position[PUSHER]
        return d / jnp.maximum(jnp.linalg.norm(d), 1e-6) + 0.3 * noise

    def env_rollout(key: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        k0, k1, k2 = jax.random.split(key, 3)
        st0 = scene.reset(k0)
        target = jax.random.randint(k1, (), 0, 3)

        def body(st: SimState, k: jax.Array) -> tuple[SimState, dict[str, jax.Array]]:
            st = scene.control_step(st, policy_fn(st, k, target))
            return st, metrics(st)

        st, ms = jax.lax.scan(body, st0, jax.random.split(k2, steps))
        boxes = jnp.array(BOX_SLOTS)
        moved = jnp.concatenate(
            [
                jnp.linalg.norm(st.polygon.position[boxes] - st0.polygon.position[boxes], axis=-1),
                jnp.linalg.norm(st.circle.position[DISC] - st0.circle.position[DISC])[None],
            ]
        )
        return ms, moved

    ms, moved = jax.jit(jax.vmap(env_rollout))(jax.random.split(jax.random.PRNGKey(7), n))
    ms = {k: np.asarray(v) for k, v in ms.items()}
    res: dict[str, Any] = {
        "config": cfg.spec,
        "policy": policy,
        "num_envs": n,
        "control_steps": steps,
    }
    for k, v in ms.items():
        if k.startswith(("pen", "geom")):
            res[f"max {k}"] = float(v.max())
            res[f"p99 {k}"] = float(np.percentile(v, 99))
        elif k == "max obj speed":
            res[k] = float(v.max())
        else:
            res[f"frac env-steps {k}"] = float(v.mean())
            res[f"envs with {k}"] = int(v.any(axis=1).sum())
    res["mean obj displacement"] = float(np.asarray(moved).mean())
    return res


# ---------------------------------------------------------------- reporting
def merge(rows: list[dict], new: dict, keys: tuple[str, ...]) -> None:
    rows[:] = [r for r in rows if any(r.get(k) != new.get(k) for k in keys)]
    rows.append(new)


def markdown(data: dict[str, Any]) -> str:
    out = []
    if data.get("throughput"):
        out += [
            "### Throughput (control steps/s = envs x control steps / best wall time)",
            "",
            "| config | substeps | iters | envs | control steps/s | substeps/s | compile s"
            " | walls s (best run) | runs | cpu/wall |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for r in sorted(
            data["throughput"], key=lambda r: (r["config"], r["xla_flags"], r["num_envs"])
        ):
            walls = ", ".join(f"{w:.2f}" for w in r["walls_s"])
            name = r["config"] + (f" + `XLA_FLAGS={r['xla_flags']}`" if r["xla_flags"] else "")
            out.append(
                f"| {name} | {r['substeps']} | {r['iters']} | {r['num_envs']} | "
                f"{r['steps_per_s']:,.0f} | {r['substeps_per_s']:,.0f} | {r['compile_s']:.1f} | "
                f"{walls} | {r.get('runs', 1)} | {r['cpu_per_wall']:.2f} |"
            )
        out.append("")
    for ph in data.get("phases", []):
        total = next(r["ms_per_substep"] for r in ph["rows"] if r["phase"].startswith("full"))
        out += [
            f"### Phases: {ph['config']}, {ph['num_envs']} envs, XLA_FLAGS={ph.get('xla_flags', '')!r}"
            " (ms per batched substep, best)",
            "",
            "| phase | ms / substep | % of full substep |",
            "|---|---:|---:|",
        ]
        for r in ph["rows"]:
            out.append(
                f"| {r['phase']} | {r['ms_per_substep']:.2f} | {100 * r['ms_per_substep'] / total:.0f}% |"
            )
        out.append("")
    for pr in data.get("profile", []):
        out += [
            f"### Profile: {pr['config']}, {pr['num_envs']} envs, XLA_FLAGS={pr['xla_flags']!r}"
            " (leaf XLA:CPU ops of one batched substep)",
            "",
            "| op kind | ms / substep | share | ops executed / substep |",
            "|---|---:|---:|---:|",
        ]
        for r in pr["rows"][:12]:
            out.append(
                f"| {r['kind']} | {r['ms']:.1f} | {100 * r['share']:.0f}% | {r['ops']:.0f} |"
            )
        total = sum(r["ops"] for r in pr["rows"])
        out += [f"| all | {sum(r['ms'] for r in pr['rows']):.1f} | 100% | {total:.0f} |", ""]
        if pr.get("scopes"):
            out += [
                "| engine phase (named scope) | ms / substep | share | of which sort ms |",
                "|---|---:|---:|---:|",
            ]
            for r in pr["scopes"]:
                out.append(
                    f"| {r['scope']} | {r['ms']:.1f} | {100 * r['share']:.0f}% | {r['sort_ms']:.1f} |"
                )
            out.append("")
    if data.get("check"):
        cols = [
            "max pen obj-obj",
            "max pen obj-wall",
            "max pen obj-pusher",
            "max pen pusher-wall",
            "max geom wall depth obj",
            "max geom wall depth pusher",
            "envs with escaped",
            "envs with nonfinite",
            "frac env-steps pusher contact",
            "max obj speed",
            "mean obj displacement",
        ]
        out += [
            "### Contact quality (max over envs and control steps; units 0.1 m)",
            "",
            "| config | policy | envs x steps | " + " | ".join(cols) + " |",
            "|---|---|---|" + "---:|" * len(cols),
        ]
        for r in sorted(data["check"], key=lambda r: (r["config"], r["policy"])):
            vals = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
            out.append(
                f"| {r['config']} | {r['policy']} | {r['num_envs']}x{r['control_steps']} | "
                + " | ".join(vals)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=["throughput"],
        choices=["throughput", "phases", "profile", "check"],
    )
    p.add_argument(
        "--configs", nargs="+", default=["default", "trim", "trim-it4-ss3", "trim-it2-ss2"]
    )
    p.add_argument("--num-envs", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--control-steps", type=int, default=50, help="scan length of a timed rollout")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per measurement (best kept)")
    p.add_argument("--phase-envs", type=int, default=1024)
    p.add_argument("--phase-reps", type=int, default=20, help="phase calls per timed loop")
    p.add_argument("--check-envs", type=int, default=256)
    p.add_argument("--check-steps", type=int, default=100)
    p.add_argument("--policies", nargs="+", default=["random", "seek"], choices=["random", "seek"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/jax2d_study.json"))
    p.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
    args = p.parse_args(argv)
    cfgs = [Config.parse(s) for s in args.configs]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = (
        json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    )
    for k in ("throughput", "phases", "profile", "check"):
        data.setdefault(k, [])

    def save() -> None:
        data["machine"] = machine_info()
        args.out.write_text(json.dumps(data, indent=1))

    for cfg in cfgs:
        if "throughput" in args.sections:
            for n in args.num_envs:
                r = run_throughput(cfg, n, args.control_steps, args.repeats)
                print(
                    f"{cfg.spec} n={n}: {r['steps_per_s']:,.0f} steps/s (compile {r['compile_s']:.1f}s)",
                    flush=True,
                )
                keys = ("config", "num_envs", "xla_flags")
                prev = [x for x in data["throughput"] if all(x.get(k) == r[k] for k in keys)]
                # Re-runs keep the best (other processes only ever slow a run down).
                r["runs"] = 1 + sum(x.get("runs", 1) for x in prev)
                if prev and prev[0]["steps_per_s"] > r["steps_per_s"]:
                    r = {**prev[0], "runs": r["runs"]}
                merge(data["throughput"], r, keys)
                save()
        if "phases" in args.sections:
            r = run_phases(cfg, args.phase_envs, args.phase_reps, args.repeats)
            print(f"{cfg.spec}: phases done", flush=True)
            merge(data["phases"], r, ("config", "num_envs", "xla_flags"))
            save()
        if "profile" in args.sections:
            merge(
                data["profile"],
                run_profile(cfg, args.phase_envs),
                ("config", "num_envs", "xla_flags"),
            )
            save()
        if "check" in args.sections:
            for pol in args.policies:
                r = run_check(cfg, args.check_envs, args.check_steps, pol)
                print(f"{cfg.spec} {pol}: checked", flush=True)
                merge(data["check"], r, ("config", "policy"))
                save()

    print()
    print(markdown(data))
    print()
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
