"""Inference latency of one action chunk of the π0-style policy (p50/p99), with and without
reusing the prefix's keys/values across Euler steps, vs the number of Euler steps; and
training throughput (samples/s) vs model size.

    python benchmarks/vla_latency.py
    python benchmarks/vla_latency.py --horizon 50 --steps 1 5 10 20 --repeats 200
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import machine_info

from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.model import Batch, PolicyModel

SIZES = {
    "tiny": dict(width=64, depth=2, action_width=48, heads=2, head_dim=32),
    "default": dict(),
    # the default until 2026-11: 4 heads and a 96-wide action expert (1.88M parameters)
    "previous": dict(heads=4, action_width=96),
    "wide": dict(width=256, depth=6, action_width=192, heads=8, head_dim=32),
}


def model_for(size: str, horizon: int, arch: str = "vla") -> PolicyModel:
    cfg = ModelConfig(arch=arch, horizon=horizon, state_dim=54, action_dim=2, **SIZES[size])
    return PolicyModel(cfg)


def latency(model: PolicyModel, num_steps: int, cached: bool, repeats: int) -> dict:
    params = model.init(jax.random.key(0))
    obs = model.fake_obs(1)
    f = jax.jit(lambda p, k, o: model.sample(p, k, o, num_steps, cached=cached))
    jax.block_until_ready(f(params, jax.random.key(0), obs))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, jax.random.key(i), obs))
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def train_throughput(model: PolicyModel, batch_size: int, repeats: int) -> float:
    params = model.init(jax.random.key(0))
    opt = optax.adamw(1e-4)
    st = opt.init(params)
    c = model.cfg
    batch = Batch(
        model.fake_obs(batch_size),
        jnp.zeros((batch_size, c.horizon, c.action_dim)),
        jnp.ones((batch_size, c.horizon), bool),
    )

    @jax.jit
    def step(params, st, key):
        (_, _), g = jax.value_and_grad(model.loss, has_aux=True)(params, key, batch)
        u, st = opt.update(g, st, params)
        return optax.apply_updates(params, u), st

    params, st = jax.block_until_ready(step(params, st, jax.random.key(0)))
    t0 = time.perf_counter()
    for i in range(repeats):
        params, st = step(params, st, jax.random.key(i))
    jax.block_until_ready(params)
    return batch_size * repeats / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--horizon", type=int, default=50, help="actions per chunk")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20], help="Euler steps")
    ap.add_argument("--sizes", nargs="+", default=["tiny", "default", "wide"], choices=SIZES)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64, help="training throughput batch")
    args = ap.parse_args(argv)

    print("### Inference latency per chunk (batch 1)\n")
    print("| size | params | H | Euler steps | KV cache | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for size in args.sizes:
        model = model_for(size, args.horizon)
        n = sum(x.size for x in jax.tree.leaves(model.init(jax.random.key(0))))
        for s in args.steps:
            for cached in (True, False):
                r = latency(model, s, cached, args.repeats)
                print(
                    f"| {size} | {n / 1e6:.2f}M | {args.horizon} | {s} | "
                    f"{'yes' if cached else 'no'} | {r['p50']:.1f} | {r['p99']:.1f} |",
                    flush=True,
                )
    print("\n### Training throughput (H = 10, batch", args.batch_size, ")\n")
    print("| arch | size | params | samples/s |")
    print("|---|---|---:|---:|")
    for arch in ("vla", "mlp-flow", "mlp-bc"):
        for size in args.sizes if arch == "vla" else ["default"]:
            model = model_for(size, 10, arch)
            n = sum(x.size for x in jax.tree.leaves(model.init(jax.random.key(0))))
            sps = train_throughput(model, args.batch_size, 10)
            print(f"| {arch} | {size} | {n / 1e6:.2f}M | {sps:,.0f} |", flush=True)
    print()
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
