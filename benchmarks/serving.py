"""Starting ``anyskill serve`` for a benchmark (no JAX here: client processes import it)."""

from __future__ import annotations

import sys


def serve_process(flags: list[str]):
    """``anyskill serve --port 0 FLAGS`` in its own process; returns ``(process, port)`` once it
    listens (the port from its first line of output)."""
    import re
    import subprocess

    cmd = [sys.executable, "-m", "anyskill.cli", "serve", "--port", "0", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r":(\d+) ", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"anyskill serve {' '.join(flags)} did not start: {line!r}")
    return proc, int(m.group(1))
