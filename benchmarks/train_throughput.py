"""CRL training throughput: gradient steps/s and env steps/s vs network depth and width.

What is timed: ``iterations`` jitted CRL iterations (collect ``num_envs * unroll_length`` env
steps, insert, ``updates_per_unroll`` gradient steps on critic, actor and temperature) as one
``lax.scan``, after compiling. Depth is the number of Dense layers inside residual blocks of
every network (critic encoders and actor).

    python benchmarks/train_throughput.py
    python benchmarks/train_throughput.py --widths 256 --depths 4 8 16 32 64
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
from common import machine_info

from anyskill.algos.crl.config import get_preset
from anyskill.algos.crl.train import make_train


def measure(config, iterations: int, repeats: int) -> dict:
    trainer = make_train(config)
    state = jax.jit(trainer.prefill)(jax.jit(trainer.init_state)(jax.random.PRNGKey(0)))
    run = jax.jit(lambda s: jax.lax.scan(trainer.iteration, s, None, length=iterations))
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(run(state))
    compile_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(run(state))
        best = min(best, time.perf_counter() - t0)
    grad_steps = iterations * config.updates_per_unroll
    return {
        "grad_steps_per_s": grad_steps / best,
        "env_steps_per_s": iterations * config.steps_per_iteration / best,
        "compile_s": compile_s,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--preset", default="pointmaze-u", help="base config (batch, envs, UTD)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    p.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--iterations", type=int, default=5, help="iterations per timed call")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    base = get_preset(args.preset)
    rows = []
    for width in args.widths:
        for depth in args.depths:
            cfg = dataclasses.replace(
                base, critic_width=width, actor_width=width, critic_depth=depth, actor_depth=depth
            )
            r = measure(cfg, args.iterations, args.repeats)
            rows.append((width, depth, r))
            print(f"width {width} depth {depth}: {r}", file=sys.stderr, flush=True)
    print(
        f"Base preset `{args.preset}`: batch {base.batch_size}, {base.num_envs} envs x "
        f"{base.unroll_length} steps per iteration, {base.updates_per_unroll} gradient steps "
        "per iteration.\n"
    )
    print("| width | depth | gradient steps/s | env steps/s | compile (s) |")
    print("|---:|---:|---:|---:|---:|")
    for width, depth, r in rows:
        print(
            f"| {width} | {depth} | {r['grad_steps_per_s']:,.0f} | "
            f"{r['env_steps_per_s']:,.0f} | {r['compile_s']:.1f} |"
        )
    print()
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
