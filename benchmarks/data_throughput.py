"""Episode-store throughput: writing (frames/s, with and without camera images), sampling
(batches/s of 256 windows with action chunks of 50) at 10^5, 10^6 and 10^7 frames, memory,
and the cost of a training step that would consume those batches.

    python benchmarks/data_throughput.py                      # everything (10^7 needs ~3 GB disk)
    python benchmarks/data_throughput.py --sizes 100000       # quick

Each measurement runs in its own subprocess so its peak RSS is its own. Synthetic datasets
for sampling are written straight in the LeRobot v3.0 layout (many episodes per parquet
file) rather than through ``EpisodeWriter``, whose per-episode atomic rewrite is measured
separately in the write part. Results go to benchmarks/results/data_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STATE_DIM, ACTION_DIM, EPISODE = 20, 7, 200
BATCH, CHUNK = 256, 50


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- parts


def part_write(root: Path, frames: int, images: bool, durable: bool) -> dict:
    from anyskill.data.format import vector_feature, video_feature
    from anyskill.data.writer import EpisodeWriter

    feats = {"observation.state": vector_feature(STATE_DIM), "action": vector_feature(ACTION_DIM)}
    if images:
        feats["observation.images.top"] = video_feature(64, 64, 10)
    w = EpisodeWriter.create(root, feats, fps=10, durable=durable)
    rng = np.random.default_rng(0)
    episode = 100
    state = rng.normal(size=(episode, STATE_DIM)).astype(np.float32)
    action = rng.normal(size=(episode, ACTION_DIM)).astype(np.float32)
    img = rng.integers(0, 255, size=(episode, 64, 64, 3), dtype=np.uint8)
    img = (img // 64 * 64).astype(np.uint8)  # blocky, not white noise
    t0 = time.perf_counter()
    n = 0
    commit = 0.0
    while n < frames:
        for t in range(episode):
            f = {"observation.state": state[t], "action": action[t]}
            if images:
                f["observation.images.top"] = img[t]
            w.add_frame(f, task=f"task {n % 7}")
        c0 = time.perf_counter()
        w.end_episode(success=True)
        commit += time.perf_counter() - c0
        n += episode
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {
        "frames": n,
        "images": images,
        "seconds": dt,
        "frames_per_s": n / dt,
        "commit_ms_per_episode": 1e3 * commit / (n // episode),
        "disk_mb": size / 2**20,
        "peak_rss_mb": peak_mb(),
    }


def part_generate(root: Path, frames: int) -> dict:
    """A synthetic dataset in the v3.0 layout, ~100 MB per data file."""
    import pyarrow as pa

    from anyskill.data import meta, parquet
    from anyskill.data.format import INFO_PATH, Info, atomic_write_json, index_features
    from anyskill.data.format import vector_feature as vf

    feats = {"observation.state": vf(STATE_DIM), "action": vf(ACTION_DIM)}
    feats["intervention"] = vf(1, "bool")
    feats.update(index_features())
    schema = parquet.frame_schema(feats)
    rng = np.random.default_rng(0)
    n_ep = frames // EPISODE
    per_file = max(1, (100 * 2**20) // (EPISODE * 4 * (STATE_DIM + ACTION_DIM + 12)))
    rows = []
    t0 = time.perf_counter()
    for fi, first in enumerate(range(0, n_ep, per_file)):
        eps = range(first, min(first + per_file, n_ep))
        n = len(eps) * EPISODE
        start = first * EPISODE
        fr = np.tile(np.arange(EPISODE), len(eps))
        cols = {
            "observation.state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
            "action": rng.normal(size=(n, ACTION_DIM)).astype(np.float32),
            "intervention": np.zeros(n, bool),
            "timestamp": (fr / 10).astype(np.float32),
            "frame_index": fr.astype(np.int64),
            "episode_index": np.repeat(np.arange(first, first + len(eps)), EPISODE),
            "index": np.arange(start, start + n),
            "task_index": np.repeat(np.arange(first, first + len(eps)) % 7, EPISODE),
        }
        table = pa.Table.from_arrays(
            [parquet.to_arrow(feats[k], cols[k]) for k in schema.names], schema=schema
        )
        parquet.write_table(root / f"data/chunk-000/file-{fi:03d}.parquet", table)
        for e in eps:
            rows.append(
                {
                    "episode_index": e,
                    "tasks": [f"task {e % 7}"],
                    "length": EPISODE,
                    "data/chunk_index": 0,
                    "data/file_index": fi,
                    "dataset_from_index": e * EPISODE,
                    "dataset_to_index": (e + 1) * EPISODE,
                    "meta/episodes/chunk_index": 0,
                    "meta/episodes/file_index": 0,
                    "success": e % 2,
                    "source": ("demonstration", "autonomous", "corrected")[e % 3],
                    "policy_version": "",
                }
            )
    meta.write_episode_table(root, 0, 0, meta.episode_table(rows))
    meta.write_tasks(root, [f"task {i}" for i in range(7)])
    info = Info(
        fps=10,
        features=feats,
        total_episodes=n_ep,
        total_frames=n_ep * EPISODE,
        total_tasks=7,
        data_files_size_in_mb=100,
    )
    atomic_write_json(root / INFO_PATH, info.to_json())
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"seconds": time.perf_counter() - t0, "disk_mb": size / 2**20}


def part_sample(root: Path, cache: Path, batches: int) -> dict:
    from anyskill.data.reader import Dataset
    from anyskill.data.sampler import Sampler, SamplerConfig

    r0 = rss_mb()
    t0 = time.perf_counter()
    ds = Dataset.open(root, cache_dir=cache)  # first open: streams parquet into the cache
    first_open = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = Dataset.open(root, cache_dir=cache)
    reopen = time.perf_counter() - t0
    rss_open = rss_mb()
    out = {"frames": ds.num_frames, "first_open_s": first_open, "reopen_s": reopen}
    for name, cfg in {
        "uniform": SamplerConfig(batch_size=BATCH, chunk=CHUNK, state_key="observation.state"),
        "filtered": SamplerConfig(
            batch_size=BATCH, chunk=CHUNK, sources=("autonomous", "corrected"), success=True
        ),
        "window4": SamplerConfig(batch_size=BATCH, chunk=CHUNK, obs_window=4),
    }.items():
        s = Sampler(ds, cfg)
        for _ in range(5):
            s.sample()
        t0 = time.perf_counter()
        for _ in range(batches):
            s.sample()
        out[f"{name}_batches_per_s"] = batches / (time.perf_counter() - t0)
    out["rss_start_mb"] = r0
    out["rss_after_open_mb"] = rss_open
    out["rss_after_sampling_mb"] = rss_mb()
    out["peak_rss_mb"] = peak_mb()
    cache_mb = sum(p.stat().st_size for p in cache.rglob("*.npy")) / 2**20
    out["cache_mb"] = cache_mb
    return out


def part_train_step(steps: int) -> dict:
    """A behaviour-cloning step on one batch (256 × chunk 50): residual-free MLP, width 512,
    3 hidden layers, state [20] → action chunk [50 × 7], MSE + Adam; jitted, donated."""
    import jax
    import jax.numpy as jnp
    import optax

    key = jax.random.key(0)
    sizes = [STATE_DIM, 512, 512, 512, CHUNK * ACTION_DIM]
    params = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        k = jax.random.fold_in(key, i)
        params.append((jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss(p, s, a, m):
        h = s
        for w, b in p[:-1]:
            h = jax.nn.gelu(h @ w + b)
        w, b = p[-1]
        pred = (h @ w + b).reshape(a.shape)
        return jnp.sum(((pred - a) ** 2).mean(-1) * m) / jnp.sum(m)

    @jax.jit
    def step(p, o, s, a, m):
        val, g = jax.value_and_grad(loss)(p, s, a, m)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, val

    s = jnp.ones((BATCH, STATE_DIM))
    a = jnp.ones((BATCH, CHUNK, ACTION_DIM))
    m = jnp.ones((BATCH, CHUNK))
    params, opt_state, v = step(params, opt_state, s, a, m)
    v.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        params, opt_state, v = step(params, opt_state, s, a, m)
    v.block_until_ready()
    return {"steps_per_s": steps / (time.perf_counter() - t0)}


# --------------------------------------------------------------------------- driver


def run_part(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--part", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--write-frames", type=int, default=20_000)
    p.add_argument("--write-image-frames", type=int, default=3_000)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_throughput.md"))
    p.add_argument("--part", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        kind, *rest = args.part
        if kind == "write":
            res = part_write(Path(rest[0]), int(rest[1]), rest[2] == "1", rest[3] == "1")
        elif kind == "generate":
            res = part_generate(Path(rest[0]), int(rest[1]))
        elif kind == "sample":
            res = part_sample(Path(rest[0]), Path(rest[1]), int(rest[2]))
        else:
            res = part_train_step(int(rest[0]))
        print(json.dumps(res))
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine_info

    work = Path(args.workdir or tempfile.mkdtemp(prefix="anyskill-data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = ["# Episode-store throughput", ""]
    print(f"workdir {work}", file=sys.stderr)
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731

    lines += [
        "## Write (EpisodeWriter: add_frame × 100, then end_episode)",
        "",
        "| features | fsync | frames | frames/s | commit ms/episode | disk MB | peak RSS MB "
        "| load |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    plan = [
        (False, True, args.write_frames),
        (False, False, args.write_frames),
        (True, True, args.write_image_frames),
    ]
    for images, durable, frames in plan:
        root = work / f"write-{int(images)}-{int(durable)}"
        shutil.rmtree(root, ignore_errors=True)
        r = run_part(
            ["write", str(root), str(frames), "1" if images else "0", "1" if durable else "0"]
        )
        feat = f"state[{STATE_DIM}] + action[{ACTION_DIM}]" + (" + 64×64 camera" if images else "")
        lines.append(
            f"| {feat} | {'yes' if durable else 'no'} | {r['frames']:,} | {r['frames_per_s']:,.0f} | "
            f"{r['commit_ms_per_episode']:.1f} | {r['disk_mb']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{os.getloadavg()[0]:.2f} |"
        )
        print(lines[-1], file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)

    train = run_part(["train", "200"])
    lines += [
        "",
        f"## Sample (batches of {BATCH} windows, action chunk {CHUNK}, state[{STATE_DIM}] "
        f"action[{ACTION_DIM}], episodes of {EPISODE})",
        "",
        "| frames | uniform batches/s | filtered batches/s | obs window 4 batches/s | "
        "first open (cache build) s | reopen ms | cache MB | RSS after open MB | "
        "RSS after sampling MB | peak RSS MB | × train step | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in args.sizes:
        root, cache = work / f"ds-{n}", work / f"cache-{n}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        g = run_part(["generate", str(root), str(n)])
        print(
            f"generated {n} frames in {g['seconds']:.1f}s ({g['disk_mb']:.0f} MB)", file=sys.stderr
        )
        r = run_part(["sample", str(root), str(cache), str(args.batches)])
        ratio = r["uniform_batches_per_s"] / train["steps_per_s"]
        lines.append(
            f"| {r['frames']:,} | {r['uniform_batches_per_s']:,.0f} | "
            f"{r['filtered_batches_per_s']:,.0f} | {r['window4_batches_per_s']:,.0f} | "
            f"{r['first_open_s']:.1f} | {1e3 * r['reopen_s']:.0f} | {r['cache_mb']:,.0f} | "
            f"{r['rss_after_open_mb']:.0f} | {r['rss_after_sampling_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {ratio:.0f}× | {os.getloadavg()[0]:.2f} |"
        )
        print(lines[-1], file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    lines += [
        "",
        f"Training step for comparison: a jitted behaviour-cloning MLP step (state[{STATE_DIM}] "
        f"→ 3×512 GELU → action chunk {CHUNK}×{ACTION_DIM}, masked MSE, Adam) on one batch of "
        f"{BATCH}: **{train['steps_per_s']:.0f} steps/s** on this CPU. '× train step' = uniform "
        "batches/s ÷ train steps/s (target ≥ 10×).",
        "",
        "## Machine",
        "",
        *machine_info(),
        f"- `uptime` at the end: {uptime()}",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
