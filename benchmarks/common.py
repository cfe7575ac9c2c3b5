"""Shared by the benchmark scripts: a description of the machine next to every figure."""

from __future__ import annotations

import os
import platform
import shlex
import sys

import jax


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return [
        f"- command: `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"- CPU: {cpu_model()}; nproc {os.cpu_count()} (usable by this process: {usable})",
        f"- jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}",
        f"- python {platform.python_version()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
        f"- load average (1/5/15 min) at the end: {load} — other processes skew the numbers",
    ]


def write_report(path, lines: list[str]) -> None:
    """Write a Markdown report (the lines, then the machine it ran on) and print it."""
    from pathlib import Path

    lines = [*lines, "", "Machine:", *machine_info(), ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))
    print("\n".join(lines))
