"""Environment steps per second vs the number of parallel envs.

What is timed: one ``jax.jit`` call running ``lax.scan`` over ``vmap(env.step)`` (auto-reset
included) with actions drawn uniformly in [-1, 1] inside the scan, as a training loop's
collection phase would. Compilation is done first and not timed; each repetition ends with
``block_until_ready``. Prints a Markdown table and the machine it ran on.

    python benchmarks/env_throughput.py
    python benchmarks/env_throughput.py --env pointmaze-u pointmaze-hardest --num-envs 1 1024 16384

With several local devices (e.g. ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` on a
2-core CPU) the envs are split over them, one thread each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from common import machine_info

from anyskill.envs import REGISTRY, Env, make


def make_rollout(env: Env, num_envs: int, num_steps: int, image_size: int = 0):
    """``rollout(state, key) -> state``: ``num_steps`` auto-resetting steps of ``num_envs``
    envs under uniform random actions, jitted. (No buffer donation: a state fresh from
    ``reset`` shares buffers between fields, e.g. ``obs`` and ``final_obs``, and the state is
    small next to the work of one call.)"""

    def rollout(state, key):
        def body(state, t):
            key_t = jax.random.fold_in(key, t)
            actions = jax.random.uniform(key_t, (num_envs, env.action_dim), minval=-1.0, maxval=1.0)
            state = jax.vmap(env.step)(state, actions)
            if image_size:
                # Render every env's camera after every step; the checksum keeps XLA from
                # dropping the images as unused.
                imgs = jax.vmap(lambda p: env.render_image(p, image_size))(state.physics)
                return state, jnp.sum(imgs[:, ::7, ::7].astype(jnp.int32))
            return state, jnp.int32(0)

        state, check = jax.lax.scan(body, state, jnp.arange(num_steps))
        return state, check

    return jax.jit(rollout)


def make_sharded_rollout(env: Env, num_envs: int, num_steps: int, image_size: int = 0):
    """The same rollout with the env axis split over every local device (``shard_map``).

    XLA:CPU runs one batched env step on about one core; started with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` each of N host "devices" steps its
    own slice of the envs on its own thread."""
    ndev = jax.device_count()
    if ndev == 1:
        return make_rollout(env, num_envs, num_steps, image_size)
    if num_envs % ndev:
        raise SystemExit(f"--num-envs {num_envs} is not a multiple of the {ndev} devices")
    local = make_rollout(env, num_envs // ndev, num_steps, image_size).__wrapped__
    mesh = jax.sharding.Mesh(jax.devices(), ("env",))
    P = jax.sharding.PartitionSpec

    def rollout(state, key):
        key = jax.random.fold_in(key, jax.lax.axis_index("env"))
        state, check = local(state, key)
        return state, jax.lax.psum(check, "env")

    return jax.jit(
        jax.shard_map(rollout, mesh=mesh, in_specs=(P("env"), P()), out_specs=(P("env"), P()))
    )


def measure(env: Env, num_envs: int, num_steps: int, repeats: int, image_size: int = 0) -> dict:
    key_reset, key_run = jax.random.split(jax.random.key(0))
    state = jax.vmap(env.reset)(jax.random.split(key_reset, num_envs))
    rollout = make_sharded_rollout(env, num_envs, num_steps, image_size)
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(rollout(state, key_run))  # compile + first run
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(rollout(state, jax.random.fold_in(key_run, r)))
        times.append(time.perf_counter() - t0)
    steps = num_envs * num_steps
    return {
        "best": steps / min(times),
        "median": steps / statistics.median(times),
        "scan_length": num_steps,
        "compile_s": compile_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--env",
        nargs="+",
        default=["pointmaze-u"],
        choices=sorted(REGISTRY),
        metavar="ENV",
        help=f"registered env names; any of {', '.join(sorted(REGISTRY))}",
    )
    parser.add_argument(
        "--num-envs",
        nargs="+",
        type=int,
        default=[1, 16, 256, 1024, 4096, 16384],
        help="numbers of parallel envs to measure",
    )
    parser.add_argument(
        "--env-steps-per-call",
        type=int,
        default=2_000_000,
        help="env steps per timed call; the scan length is this / num_envs, clipped to "
        "[--min-scan, --max-scan]",
    )
    parser.add_argument("--min-scan", type=int, default=100, help="shortest scan length")
    parser.add_argument("--max-scan", type=int, default=1000, help="longest scan length")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting")
    parser.add_argument(
        "--image-size",
        nargs="+",
        type=int,
        default=[0],
        help="also render an RGB camera image of this size after every step (0: no images; "
        "tabletop envs only)",
    )
    args = parser.parse_args(argv)
    for n in args.num_envs:
        if n < 1:
            parser.error(f"--num-envs must be >= 1, got {n}")

    rows = []
    for name, image_size in [(e, i) for e in args.env for i in args.image_size]:
        env = make(name)
        if image_size and not hasattr(env, "render_image"):
            parser.error(f"{name} has no camera; --image-size needs a tabletop env")
        label = f"{name} + {image_size}px image" if image_size else name
        for n in args.num_envs:
            steps = min(max(args.env_steps_per_call // n, args.min_scan), args.max_scan)
            r = measure(env, n, steps, args.repeats, image_size)
            rows.append((label, n, r))
            print(
                f"{label} num_envs={n}: best {r['best']:,.0f} steps/s, median "
                f"{r['median']:,.0f} (scan {steps}, compile {r['compile_s']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )

    print("| env | num_envs | steps/s (best) | steps/s (median) | scan length |")
    print("|---|---:|---:|---:|---:|")
    for name, n, r in rows:
        print(f"| {name} | {n} | {r['best']:,.0f} | {r['median']:,.0f} | {r['scan_length']} |")
    print()
    print(
        f"Best and median of {args.repeats} timed calls after compiling; each call is one jit of "
        "lax.scan over vmap(env.step) with auto-reset and uniform random actions"
        f", envs split over {jax.device_count()} device(s)."
    )
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
