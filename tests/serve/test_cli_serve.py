"""`anyskill serve` / `anyskill run-robot` command lines."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from anyskill.cli import main


def test_serve_needs_exactly_one_policy(capsys):
    assert main(["serve"]) == 2
    assert "exactly one of CKPT" in capsys.readouterr().err
    assert main(["serve", "--policy", "random-mlpp"]) == 2
    assert "Did you mean 'random-mlp'" in capsys.readouterr().err


def test_serve_rejects_unknown_checkpoint(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a format anyskill can serve" in capsys.readouterr().err


def test_run_robot_without_server_fails_cleanly(capsys, monkeypatch):
    import anyskill.serve.robot as robot

    class NoSim:  # skip compiling the env: the link fails first
        def __init__(self, *a, **k):
            pass

        def run(self, server, **kw):
            from anyskill.serve.runtime import PolicyLink

            link = PolicyLink(server, backoff_s=(0.01, 0.05)).start(wait_s=0.3)
            link.close()
            raise ConnectionError(f"no policy server answered at {server}")

    monkeypatch.setattr(robot, "SimRobot", NoSim)
    # --image-size: skip asking the (absent) server for its camera size, which waits 30 s
    argv = ["run-robot", "--server", "ws://127.0.0.1:1", "--episodes", "1", "--image-size", "64"]
    assert main(argv) == 2
    assert "no policy server answered" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_and_run_robot_end_to_end(tmp_path):
    """Real processes: the reach stand-in served, a simulated robot with 50 ms injected
    latency succeeds and records its episodes; SIGINT shuts the server down cleanly."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anyskill.cli",
            "serve",
            "--policy",
            "expert:tabletop-reach",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+) ", line).group(1))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "anyskill.cli",
                "run-robot",
                "--server",
                f"ws://127.0.0.1:{port}",
                "--episodes",
                "3",
                "--latency-ms",
                "50",
                "--jitter-ms",
                "10",
                "--record",
                str(tmp_path / "ds"),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        result = json.loads(out.stdout[out.stdout.index("{") :])
        assert result["success_rate"] == 1.0 and result["chunks"] >= 3
        from anyskill.data.reader import Dataset

        ds = Dataset.open(tmp_path / "ds")
        assert ds.num_episodes == 3 and ds.num_frames == result["steps"]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 0
