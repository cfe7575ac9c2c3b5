"""One CRL learner over two processes with jax.distributed, on loopback (issue 26).

Two processes with one CPU device each, started with the same `anyskill train crl` command
(only --process-id differs), must train exactly what one process trains on two local
devices; only process 0 may write files; a failure on process 0 must stop process 1 too."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import serialization, traverse_util

from anyskill import rundir
from anyskill.algos.crl.config import CRLConfig
from anyskill.distributed import DistributedConfig, DistributedError, initialize

#: A run of a few gradient steps: 80 prefill steps, then 3 iterations of 40 env steps and 2
#: updates each, one epoch. Compilation, not training, is most of its time.
TINY_FLAGS = [
    "--preset", "arena-smoke", "--num-envs", "8", "--batch-size", "16",
    "--replay-capacity", "20", "--min-replay-steps", "10", "--critic-width", "16",
    "--actor-width", "16", "--num-eval-envs", "8", "--total-env-steps", "200",
    "--num-epochs", "1", "--unroll-length", "5", "--updates-per-unroll", "2",
    "--no-video", "--no-progress",
]  # fmt: skip

#: `anyskill train crl ARGS`, then one line with the devices its trainer's mesh spanned.
WORKER = textwrap.dedent(
    """
    import json, sys
    from anyskill.algos.crl import run
    from anyskill.cli import main

    meshes = []
    real = run.make_train

    def recording(config, devices=None):
        trainer = real(config, devices)
        meshes.append([d.process_index for d in trainer.mesh.devices.flat])
        return trainer

    run.make_train = recording
    code = main(["train", "crl", *sys.argv[1:]])
    print("MESH " + json.dumps(meshes), flush=True)
    sys.exit(code)
    """
)

#: Safety bound for a hung job on a loaded machine; an idle 2-core machine needs far less.
DEADLINE_S = 600
RTOL, ATOL = 1e-4, 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # devices come from flags
    env.update(JAX_PLATFORMS="cpu", no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    return env


@dataclasses.dataclass
class Done:
    code: int
    out: str
    err: str

    @property
    def meshes(self) -> list[list[int]]:
        lines = [ln for ln in self.out.splitlines() if ln.startswith("MESH ")]
        return json.loads(lines[-1][5:]) if lines else []

    @property
    def summary(self) -> dict:
        """The JSON summary `anyskill train crl` prints."""
        text = self.out[self.out.index("{") : self.out.rindex("}") + 1]
        return json.loads(text)


def _run_all(commands: list[list[str]], cwd: Path) -> list[Done]:
    """Start every command at once; wait for all within DEADLINE_S; kill them all on a
    timeout (or any error here), so a hung collective never outlives the test."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            cwd=cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    deadline = time.monotonic() + DEADLINE_S
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(Done(p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed job still running after {DEADLINE_S} s; killed it")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return done


def _pair(port: int, run_dirs: list[Path], *extra: str) -> list[list[str]]:
    """The same command for processes 0 and 1 (one CPU device each); each gets its own
    --run-dir only so that the test can see that process 1 writes nothing."""
    flags = [
        {
            "--run-dir": run_dirs[pid],
            "--coordinator": f"127.0.0.1:{port}",
            "--num-processes": 2,
            "--process-id": pid,
            "--local-device-count": 1,
            "--initialization-timeout": 120,
        }
        for pid in (0, 1)
    ]
    return [[*TINY_FLAGS, *extra, *(str(x) for kv in f.items() for x in kv)] for f in flags]


def _params(run_dir: Path) -> dict[str, np.ndarray]:
    payload = serialization.msgpack_restore((run_dir / "checkpoint.msgpack").read_bytes())
    flat = traverse_util.flatten_dict(payload["state"]["params"])
    return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def _show(done: list[Done]) -> str:
    return "\n".join(f"--- exit {d.code}\n{d.out[-1500:]}\n{d.err[-3000:]}" for d in done)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Processes 0 and 1 on loopback, and one process with two local devices, all at once."""
    root = tmp_path_factory.mktemp("distributed")
    dirs = [root / "process0", root / "process1"]
    ref = [*TINY_FLAGS, "--run-dir", str(root / "reference"), "--local-device-count", "2"]
    p0, p1, single = _run_all([*_pair(_free_port(), dirs), ref], cwd=root)
    assert (p0.code, p1.code, single.code) == (0, 0, 0), _show([p0, p1, single])
    return root, dirs, p0, p1, single


def test_two_processes_train_what_one_process_trains_on_two_devices(two_process_run):
    root, (dir0, dir1), p0, p1, single = two_process_run
    # the pair's mesh spans both processes; the reference's is two devices of one process
    assert p0.meshes == p1.meshes == [[0, 1]]
    assert single.meshes == [[0, 0]]
    # only process 0 wrote a run directory
    assert (dir0 / "checkpoint.msgpack").is_file() and not dir1.exists()
    assert p0.summary["env_steps"] == p1.summary["env_steps"] == 200
    assert json.loads((dir0 / "config.json").read_text())["distributed"]["num_processes"] == 2

    got, want = _params(dir0), _params(root / "reference")
    assert got.keys() == want.keys() and len(got) > 10
    max_diff = max(float(np.max(np.abs(got[k] - want[k]), initial=0.0)) for k in got)
    print(f"max |param(2 processes) - param(1 process, 2 devices)| = {max_diff:.3g}")
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)
    # the parameters were trained, not just initialised alike
    meta = serialization.msgpack_restore((dir0 / "checkpoint.msgpack").read_bytes())
    assert int(meta["state"]["grad_steps"]) == 6


def test_process_0_refusal_stops_process_1_and_resume_needs_files_on_process_0_only(
    two_process_run,
):
    root, dirs, *_ = two_process_run
    before = (dirs[0] / "checkpoint.msgpack").read_bytes()
    # the same command again: process 0 refuses to overwrite its run; process 1, which has
    # no files, stops with process 0's reason instead of waiting for it in a collective
    p0, p1 = _run_all(_pair(_free_port(), dirs), cwd=root)
    assert (p0.code, p1.code) == (2, 2), _show([p0, p1])
    assert "already holds a run" in p0.err
    assert "process 0 stopped: RunError:" in p1.err and "already holds a run" in p1.err
    # --resume of the finished run: process 1 gets config, metrics and checkpoint from
    # process 0 (its own --run-dir does not exist), trains nothing more and writes nothing
    p0, p1 = _run_all(_pair(_free_port(), dirs, "--resume"), cwd=root)
    assert (p0.code, p1.code) == (0, 0), _show([p0, p1])
    assert p0.summary["env_steps"] == p1.summary["env_steps"] == 200
    assert not dirs[1].exists()
    assert (dirs[0] / "checkpoint.msgpack").read_bytes() == before


# ---- DistributedConfig ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(num_processes=0), "num_processes must be an integer >= 1, got 0"),
        (dict(num_processes=2), "num_processes=2 needs --coordinator HOST:PORT"),
        (
            dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=2),
            r"process_id must be in 0\.\.1 \(num_processes=2\), got 2",
        ),
        (dict(coordinator="127.0.0.1:1234", num_processes=2, process_id=-1), "got -1"),
        (dict(coordinator="127.0.0.1"), "coordinator must be 'host:port'.*got '127.0.0.1'"),
        (dict(coordinator="127.0.0.1:0"), "port in 1..65535.*got '127.0.0.1:0'"),
        (dict(coordinator="127.0.0.1:70000"), "got '127.0.0.1:70000'"),
        (dict(coordinator=":1234"), "got ':1234'"),
        (dict(bind_address="[::]:1234"), "bind_address='\\[::\\]:1234' is only used with"),
        (dict(coordinator="h:1", bind_address="[::]"), "bind_address must be 'host:port'"),
        (dict(local_device_count=0), "local_device_count must be an integer >= 1 or none"),
        (dict(initialization_timeout=0), "initialization_timeout must be an integer >= 1"),
    ],
)
def test_config_refuses_nonsense_naming_the_value(fields, match):
    with pytest.raises(ValueError, match=match):
        DistributedConfig(**fields)


def test_config_accepts_hosts_and_ipv6():
    assert DistributedConfig(coordinator="node-0.cluster:1234", num_processes=4, process_id=3)
    assert DistributedConfig(coordinator="[::1]:1234", bind_address="[::]:1234").enabled
    assert not DistributedConfig().enabled


def test_single_process_initialise_does_nothing():
    assert initialize(DistributedConfig()) is False
    assert jax.process_count() == 1


def test_joining_after_jax_started_alone_is_refused_with_the_fix():
    jax.devices()  # this pytest process already uses JAX alone
    cfg = DistributedConfig(coordinator="127.0.0.1:1", num_processes=2, process_id=1)
    with pytest.raises(DistributedError, match="already started in single-process mode.*first"):
        initialize(cfg)
    assert jax.process_count() == 1


def test_runs_written_before_issue_26_still_load(tiny_config):
    fields = rundir.config_to_json(tiny_config)
    del fields["distributed"]
    assert rundir.config_from_json(CRLConfig, fields, "config.json") == tiny_config


def test_flags_reach_the_crl_config():
    from anyskill.cli import TrainCRL, parse_cli

    args = ["--coordinator", "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"]
    parsed = parse_cli(TrainCRL, args, default=TrainCRL(config=CRLConfig()), prog="t")
    assert parsed.config.distributed == DistributedConfig("10.0.0.1:1234", 2, 1)
