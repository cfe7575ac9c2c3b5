"""Policy server under abuse (issue 22): do good clients keep their answers, latency and
throughput while others send poison, garbage and connection floods?

    python benchmarks/serve_abuse.py                      # random-mlp, 16 good clients, ~1 min
    python benchmarks/serve_abuse.py --seconds 10 --clients 8

Two phases of ``--seconds`` each against one server (``anyskill serve`` in its own process,
loopback): the good clients alone (quiet), then the same good clients beside one thread per
abuse kind (``ABUSES``). Good clients are closed request -> reply loops in one process, the
abusers run in another; this process samples the server's memory (/proc/PID/status). Reported:
the good clients' req/s, p50/p99 latency and error rate (error replies, wrong actions, drops),
what each abuser achieved, and the server's peak RSS against the bound its configuration
implies. Results go to benchmarks/results/serve_abuse.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import websockets
from websockets.sync.client import connect

from anyskill.serve import wire
from anyskill.serve.runtime import _PLAIN

sys.path.insert(0, str(Path(__file__).parent))
from serve_throughput import observation, start_server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "serve_abuse.md"
MB = 1 << 20


def _connect(url: str, timeout: float = 5.0):
    ws = connect(url, compression=None, max_size=None, proxy=None, open_timeout=timeout, **_PLAIN)
    meta = wire.unpack(ws.recv(timeout=timeout))
    return ws, meta


# ----------------------------------------------------------------------------- good clients


def good_clients(url: str, n: int, start: float, end: float) -> dict:
    """``n`` closed-loop clients; counts of replies and failures, latencies in [start, end]."""
    lat: list[float] = []
    counts = {"ok": 0, "error_reply": 0, "wrong": 0, "dropped": 0}
    lock = threading.Lock()

    def client(i: int):
        rng = np.random.default_rng(i)
        ws = None
        while time.monotonic() < end:
            try:
                if ws is None:
                    ws, meta = _connect(url)
                    obs = observation(meta, rng)
                    frame = wire.pack(obs)
                t0 = time.monotonic()
                ws.send(frame)
                reply = ws.recv(timeout=10)
                t1 = time.monotonic()
            except (websockets.ConnectionClosed, OSError, TimeoutError, websockets.InvalidStatus):
                ws = None
                if time.monotonic() >= start:
                    with lock:
                        counts["dropped"] += 1
                time.sleep(0.05)
                continue
            if t0 < start or t1 > end:
                continue
            kind = "error_reply"
            if not isinstance(reply, str):
                actions = wire.unpack(reply)["actions"]
                finite = np.all(np.isfinite(actions))
                kind = "ok" if finite and actions.shape == tuple(meta_shape(meta)) else "wrong"
            with lock:
                counts[kind] += 1
                if kind == "ok":
                    lat.append((t1 - t0) * 1e3)
        if ws is not None:
            ws.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, **counts}


def meta_shape(meta: dict) -> tuple[int, int]:
    return meta["action_horizon"], meta["action_dim"]


# ----------------------------------------------------------------------------- abusers


def _poison_frame(meta: dict, rng, kind: str) -> bytes:
    obs = observation(meta, rng)
    n = meta["inputs"]["observation/state"]["shape"][0]
    if kind == "float64_1e300":
        obs["observation/state"] = np.full(n, 1e300)
    elif kind == "nan":
        obs["observation/state"] = np.full(n, np.nan, np.float32)
    else:  # ragged
        obs["observation/state"] = [[1.0, 2.0], [3.0]] * (n // 2)
    return wire.pack(obs)


def _ask_loop(url: str, end: float, frames, stats: dict) -> None:
    """Send frames from ``frames()`` one at a time; count replies, error replies, closes."""
    ws = None
    while time.monotonic() < end:
        try:
            if ws is None:
                ws, meta = _connect(url)
            ws.send(frames(meta))
            reply = ws.recv(timeout=10)
            stats["error_replies" if isinstance(reply, str) else "replies"] += 1
        except (websockets.ConnectionClosed, OSError, TimeoutError, websockets.InvalidStatus):
            stats["closed"] += 1
            ws = None
            time.sleep(0.01)
    if ws is not None:
        ws.close()


def abuse_poison(url, end, stats):
    rng = np.random.default_rng(0)
    kinds = ["float64_1e300", "nan", "ragged"]
    cycle = iter(range(10**9))
    _ask_loop(url, end, lambda meta: _poison_frame(meta, rng, kinds[next(cycle) % 3]), stats)


def abuse_huge_structure(url, end, stats):
    n = 4_000_000  # 4 MB of empty maps: fits max_request_bytes, half a second to decode naively
    frame = b"\xdd" + struct.pack(">I", n) + b"\x80" * n
    _ask_loop(url, end, lambda meta: frame, stats)


def abuse_oversized(url, end, stats):
    big = [b"\x00" * (6 * MB), b"\x00" * (20 * MB)]  # too_large reply; closed (1009)
    cycle = iter(range(10**9))
    _ask_loop(url, end, lambda meta: big[next(cycle) % 2], stats)


def abuse_garbage(url, end, stats):
    rng = random.Random(0)
    _ask_loop(url, end, lambda meta: rng.randbytes(rng.randrange(1, 64 << 10)), stats)


def abuse_text(url, end, stats):
    _ask_loop(url, end, lambda meta: "x" * 100_000, stats)


def abuse_slow_loris(url, end, stats, conns: int = 8):
    """Websockets that start a 1 MB frame and trickle it a byte every 100 ms."""
    held = []
    while time.monotonic() < end:
        while len(held) < conns:
            try:
                ws, _ = _connect(url)
                ws.socket.sendall(b"\x82\xff" + struct.pack(">Q", MB) + b"\x00" * 4)
                held.append(ws)
                stats["opened"] += 1
            except (OSError, websockets.InvalidStatus, TimeoutError, websockets.ConnectionClosed):
                stats["refused"] += 1
                time.sleep(0.1)
                break
        time.sleep(0.1)
        for ws in list(held):
            try:
                ws.socket.sendall(b"\x00")
            except OSError:
                held.remove(ws)
                stats["closed"] += 1
    for ws in held:
        ws.socket.close()


def abuse_idle(url, end, stats, conns: int = 8):
    held = []
    while time.monotonic() < end:
        if len(held) < conns:
            try:
                held.append(_connect(url)[0])
                stats["opened"] += 1
            except (OSError, websockets.InvalidStatus, TimeoutError, websockets.ConnectionClosed):
                stats["refused"] += 1
        time.sleep(0.2)
    for ws in held:
        ws.socket.close()


def abuse_flood(url, end, stats, burst: int = 100):
    """Open as many websockets as the server lets us, hold them 2 s, drop them, repeat."""
    while time.monotonic() < end:
        held = []
        for _ in range(burst):
            try:
                held.append(_connect(url, timeout=2)[0])
                stats["opened"] += 1
            except (OSError, websockets.InvalidStatus, TimeoutError, websockets.ConnectionClosed):
                stats["refused"] += 1
        time.sleep(min(2.0, max(0.0, end - time.monotonic())))
        for ws in held:
            ws.socket.close()


def abuse_half_open(url, end, stats, conns: int = 50):
    """TCP connections that never finish (or never start) the websocket handshake."""
    host, port = url.removeprefix("ws://").split(":")
    held = []
    while time.monotonic() < end:
        if len(held) < conns:
            try:
                s = socket.create_connection((host, int(port)), timeout=2)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" if len(held) % 2 else b"")
                held.append(s)
                stats["opened"] += 1
            except OSError:
                stats["refused"] += 1
        else:
            time.sleep(0.1)
    for s in held:
        s.close()


def abuse_churn(url, end, stats):
    """Connect, read the metadata, disconnect: as fast as possible."""
    while time.monotonic() < end:
        try:
            ws, _ = _connect(url, timeout=2)
            ws.close()
            stats["opened"] += 1
        except (OSError, websockets.InvalidStatus, TimeoutError, websockets.ConnectionClosed):
            stats["refused"] += 1
            time.sleep(0.01)


ABUSES = {
    "poison rows (float64 1e300, NaN, ragged)": abuse_poison,
    "huge structure (4 MB of empty maps)": abuse_huge_structure,
    "oversized frames (6 MB, 20 MB)": abuse_oversized,
    "garbage bytes": abuse_garbage,
    "text frames (100 kB)": abuse_text,
    "slow loris (8 conns, 1 B / 100 ms)": abuse_slow_loris,
    "idle connections (8)": abuse_idle,
    "connection flood (bursts of 100)": abuse_flood,
    "half-open TCP (50)": abuse_half_open,
    "connect/disconnect churn": abuse_churn,
}


def abusers(url: str, end: float) -> dict[str, dict[str, int]]:
    out = {name: {"replies": 0, "error_replies": 0, "closed": 0, "opened": 0, "refused": 0}
           for name in ABUSES}  # fmt: skip
    threads = [
        threading.Thread(target=fn, args=(url, end, out[name]), daemon=True)
        for name, fn in ABUSES.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + 30)
    return out


# ----------------------------------------------------------------------------- measuring


def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(url: str, pid: int, clients: int, seconds: float, abuse: bool) -> dict:
    start = time.monotonic() + 1.5  # client connections and process start-up
    end = start + seconds
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2 if abuse else 1) as pool:
        good = pool.apply_async(good_clients, (url, clients, start, end))
        bad = pool.apply_async(abusers, (url, end)) if abuse else None
        peak_rss, cpu = 0.0, {}
        while not good.ready():
            peak_rss = max(peak_rss, memory_mb(pid)["VmRSS"])
            now = time.monotonic()
            if start <= now and "start" not in cpu:
                cpu["start"] = cpu_seconds(pid)
            if end <= now and "end" not in cpu:
                cpu["end"] = cpu_seconds(pid)
            time.sleep(0.2)
        g = good.get()
        b = bad.get(60) if bad is not None else {}
    lat = np.asarray(g["lat"]) if g["lat"] else np.asarray([np.nan])
    failures = g["error_reply"] + g["wrong"] + g["dropped"]
    return {
        "rps": g["ok"] / seconds,
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "ok": g["ok"],
        "failures": failures,
        "error_rate": failures / max(g["ok"] + failures, 1),
        "detail": {k: g[k] for k in ("error_reply", "wrong", "dropped")},
        "abusers": b,
        "peak_rss_mb": peak_rss,
        "hwm_mb": memory_mb(pid)["VmHWM"],
        "server_cpu": (cpu.get("end", cpu_seconds(pid)) - cpu["start"]) / seconds,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="random-mlp", help="built-in name or checkpoint dir")
    ap.add_argument("--clients", type=int, default=16, help="good clients")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per phase")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `serve` flag")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from common import write_report  # imports JAX: not in the client processes

    proc, port = start_server(args.policy, True, args.max_batch, args.server_arg)
    url = f"ws://127.0.0.1:{port}"
    try:
        ws, meta = _connect(url)
        ws.close()
        base_mb = memory_mb(proc.pid)["VmRSS"]
        quiet = phase(url, proc.pid, args.clients, args.seconds, abuse=False)
        print(f"quiet: {quiet}", flush=True)
        loud = phase(url, proc.pid, args.clients, args.seconds, abuse=True)
        print(f"abuse: {loud}", flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    from anyskill.serve.server import ServerConfig

    cfg = ServerConfig()  # the bench runs `anyskill serve` with its defaults unless --server-arg
    bound_mb = (cfg.max_buffered_bytes + cfg.max_connections * 2 * cfg.hard_limit_bytes) / MB
    lines = [
        "# Policy server under abuse (loopback)",
        "",
        f"Policy `{args.policy}` served by `anyskill serve` (max batch {args.max_batch}, "
        f"other limits at their defaults{'; ' + ' '.join(args.server_arg) if args.server_arg else ''}) "
        f"in its own process. {args.clients} good clients (closed request -> reply loops, one "
        f"process) measured for {args.seconds:g} s alone, then {args.seconds:g} s beside "
        f"{len(ABUSES)} abusers (one thread each, another process). A good client's failure is "
        "an error reply, a wrong or non-finite action chunk, or a dropped connection.",
        "",
        "| phase | good req/s | p50 ms | p99 ms | good replies | failures | error rate "
        "| server CPU (cores) | server peak RSS MB | load (1 min) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in (("quiet", quiet), ("abuse", loud)):
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['ok']} | "
            f"{r['failures']} | {100 * r['error_rate']:.2f} % | {r['server_cpu']:.2f} | "
            f"{r['peak_rss_mb']:.0f} "
            f"(VmHWM {r['hwm_mb']:.0f}) | {r['load']:.2f} |"
        )
    lines += [
        "",
        f"p99 under abuse / quiet: {loud['p99'] / quiet['p99']:.2f}x (target <= 2x); "
        f"req/s under abuse / quiet: {loud['rps'] / quiet['rps']:.2f}x. Server RSS after "
        f"start-up {base_mb:.0f} MB; request memory bounded by configuration at "
        f"max_buffered_bytes + max_connections x 2 x hard_limit_bytes = {bound_mb:.0f} MB "
        "above that.",
        "",
        "What the abusers got (during the abuse phase):",
        "",
        "| abuser | replies | error replies | closed by server | connections opened | refused |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    for name, s in loud["abusers"].items():
        lines.append(
            f"| {name} | {s['replies']} | {s['error_replies']} | {s['closed']} | "
            f"{s['opened']} | {s['refused']} |"
        )
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
