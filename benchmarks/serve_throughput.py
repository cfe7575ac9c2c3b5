"""Policy-server throughput on loopback: requests/s and p50/p99 latency for 1, 4, 16 and 32
concurrent clients, with batching on and off.

    python benchmarks/serve_throughput.py                          # random-mlp, ~2 min
    python benchmarks/serve_throughput.py --policy CKPT --seconds 10

The server runs as its own process (``anyskill serve``, exactly as deployed); the clients are
threads of this process, each a request -> reply loop (openpi's protocol, our wire module)
with a realistic observation: a 54-float state, a 64x64x3 uint8 image and a prompt. Results
go to benchmarks/results/serve_throughput.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from serving import serve_process
from websockets.sync.client import connect

from anyskill.serve import wire
from anyskill.serve.runtime import _PLAIN

RESULTS = Path(__file__).parent / "results" / "serve_throughput.md"


def start_server(policy: str, batching: bool, max_batch: int, extra: list[str]):
    flags = ["--policy", policy] if not Path(policy).exists() else [policy]
    flags += ["--max-batch", str(max_batch)] if batching else ["--no-batching"]
    return serve_process(flags + extra)


def observation(meta: dict, rng: np.random.Generator) -> dict:
    obs = {}
    for name, spec in meta["inputs"].items():
        if spec["dtype"] == "str":
            obs[name] = "push the red block into the green zone"
        elif spec["dtype"] == "uint8":
            obs[name] = rng.integers(0, 256, spec["shape"], dtype=np.uint8)
        else:
            obs[name] = rng.standard_normal(spec["shape"]).astype(spec["dtype"])
    return obs


def client_threads(url: str, n: int, first: int, start_measure: float, end: float):
    """``n`` closed-loop clients on threads; (latencies ms, batch sizes) in [start, end]."""
    lat: list[list[float]] = [[] for _ in range(n)]
    batches: list[list[int]] = [[] for _ in range(n)]
    errors: list[str] = []

    def client(i: int):
        rng = np.random.default_rng(first + i)
        with connect(url, compression=None, max_size=None, proxy=None, **_PLAIN) as ws:
            meta = wire.unpack(ws.recv())
            frame = wire.pack(observation(meta, rng))
            while True:
                t0 = time.monotonic()
                ws.send(frame)
                reply = ws.recv()
                t1 = time.monotonic()
                if isinstance(reply, str):
                    errors.append(reply)
                    return
                msg = wire.unpack(reply)
                if start_measure <= t0 and t1 <= end:
                    lat[i].append((t1 - t0) * 1e3)
                    batches[i].append(msg["batch_size"])
                if t1 > end:
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"error replies: {errors[:3]}")
    return [x for xs in lat for x in xs], [b for bs in batches for b in bs]


def run_clients(url: str, n: int, seconds: float, warmup: float, procs: int) -> dict:
    """``n`` clients spread over ``procs`` processes (threads within each), measured over
    the same wall-clock window (CLOCK_MONOTONIC is shared by processes)."""
    start_measure = time.monotonic() + warmup + 1.0  # + process start-up
    end = start_measure + seconds
    procs = max(1, min(procs, n))
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    firsts = [sum(shares[:i]) for i in range(procs)]
    if procs == 1:
        results = [client_threads(url, n, 0, start_measure, end)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(procs) as pool:
            results = pool.starmap(
                client_threads,
                [(url, k, f, start_measure, end) for k, f in zip(shares, firsts, strict=True)],
            )
    all_lat = np.concatenate([np.asarray(r[0]) for r in results])
    all_b = np.concatenate([np.asarray(r[1]) for r in results])
    return {
        "clients": n,
        "requests": len(all_lat),
        "rps": len(all_lat) / seconds,
        "p50": float(np.percentile(all_lat, 50)),
        "p99": float(np.percentile(all_lat, 99)),
        "mean_batch": float(all_b.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="random-mlp", help="built-in name or checkpoint dir")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured time per cell")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument(
        "--procs", type=int, default=1, help="client processes (threads share their GIL)"
    )
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from common import write_report  # imports JAX: not in the client processes

    rows = []
    for batching in (False, True):
        proc, port = start_server(args.policy, batching, args.max_batch, args.server_arg)
        try:
            for n in args.clients:
                r = run_clients(f"ws://127.0.0.1:{port}", n, args.seconds, args.warmup, args.procs)
                r["batching"] = batching
                r["load"] = os.getloadavg()[0]
                rows.append(r)
                print(
                    f"batching={'on ' if batching else 'off'} clients={n:3d} "
                    f"{r['rps']:8.1f} req/s  p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                    f"mean batch {r['mean_batch']:5.2f}  load {r['load']:.2f}",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    by = {(r["batching"], r["clients"]): r for r in rows}
    lines = [
        "# Policy server throughput (loopback)",
        "",
        f"Policy `{args.policy}`; server `anyskill serve` in its own process "
        f"(batching: max batch {args.max_batch}, wait <= 2 ms); clients are threads spread "
        f"over {args.procs} client processes, each a request -> reply loop; "
        f"{args.seconds:g} s measured per row "
        f"after {args.warmup:g} s warm-up. Observation: state [54] float32, image 64x64x3 "
        "uint8, prompt.",
        "",
        "| clients | batching | req/s | p50 ms | p99 ms | mean batch | speed-up | load (1 min) |",
        "|--:|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        base = by.get((False, r["clients"]))
        speed = f"{r['rps'] / base['rps']:.1f}x" if base and r["batching"] else ""
        lines.append(
            f"| {r['clients']} | {'on' if r['batching'] else 'off'} | {r['rps']:.0f} | "
            f"{r['p50']:.1f} | {r['p99']:.1f} | {r['mean_batch']:.2f} | {speed} | "
            f"{r['load']:.2f} |"
        )
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
