"""Every subcommand, given bad arguments, fails before any work: exit 2, one line on stderr,
nothing written (issue 22). In-process through ``anyskill.cli.main`` (fast): each case must
fail while parsing or validating, so none of them compiles, trains or serves.

A case that does start working is stopped by an alarm (``TIMEOUT_S``) and reported; whatever
it wrote shows up in the directory comparison.
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from anyskill.cli import main

TIMEOUT_S = 30  # a case fails in well under a second once imports are warm

FILE = "{file}"  # an existing file where a directory (or a dataset, a run) is expected
EMPTY = "{empty}"  # an existing empty directory that is not a dataset / run / checkpoint
NOPE = "{nope}"  # an absolute path that does not exist, outside the working directory
# A server nothing listens on (port 1 refuses at once): run-robot cases whose only fault is
# another argument must not wait for the default server.
NO_SERVER = ["--server", "ws://127.0.0.1:1"]

# (argv, a word the one-line message must contain (case-insensitive), or None)
CASES: list[tuple[list[str], str | None]] = [
    # ---- top level
    (["trian"], "did you mean 'train'"),
    # ---- train crl
    (["train", "bogus"], "crl"),
    (["train", "crl", "--bogus"], "--bogus"),
    (["train", "crl", "--num-envs", "abc"], "--num-envs"),
    (["train", "crl", "--num-envs", "0"], "num_envs"),
    (["train", "crl", "--total-env-steps", "0"], "total_env_steps"),
    (["train", "crl", "--total-env-steps", "-1"], "total_env_steps"),
    (["train", "crl", "--learning-rate", "-1"], "learning_rate"),
    (["train", "crl", "--learning-rate", "abc"], "--learning-rate"),
    (["train", "crl", "--depth", "-4"], "depth"),
    (["train", "crl", "--env", "nope"], "unknown env"),
    (["train", "crl", "--preset", "nope"], "unknown preset"),
    (["train", "crl", "--run-dir", FILE], FILE),
    (["train", "crl", "--resume", "--run-dir", NOPE], NOPE),
    # ---- train policy
    (["train", "policy"], "--data"),
    (["train", "policy", "--data", NOPE], NOPE),
    (["train", "policy", "--data", FILE], FILE),
    (["train", "policy", "--data", EMPTY], EMPTY),
    (["train", "policy", "--data", NOPE, "--steps", "0"], "steps"),
    (["train", "policy", "--data", NOPE, "--steps", "-1"], "steps"),
    (["train", "policy", "--data", NOPE, "--steps", "abc"], "--steps"),
    (["train", "policy", "--data", NOPE, "--lr", "-1"], "lr"),
    (["train", "policy", "--data", NOPE, "--batch-size", "0"], "batch_size"),
    (["train", "policy", "--data", NOPE, "--model.arch", "nope"], "arch"),
    (["train", "policy", "--data", NOPE, "--run-dir", FILE], None),
    # ---- eval (CRL)
    (["eval"], "missing"),
    (["eval", NOPE], NOPE),
    (["eval", FILE], FILE),
    (["eval", EMPTY], EMPTY),
    (["eval", NOPE, "--episodes", "0"], "episodes"),
    (["eval", NOPE, "--episodes", "-1"], "episodes"),
    (["eval", NOPE, "--episodes", "abc"], "--episodes"),
    (["eval", NOPE, "--video-episodes", "0"], "video"),
    # ---- eval policy
    (["eval", "policy"], "missing"),
    (["eval", "policy", NOPE], NOPE),
    (["eval", "policy", FILE], FILE),
    (["eval", "policy", NOPE, "--episodes", "0"], "episodes"),
    (["eval", "policy", NOPE, "--episodes", "-1"], "episodes"),
    (["eval", "policy", NOPE, "--split", "bogus"], "bogus"),
    # ---- render
    (["render"], "--env"),
    (["render", "--env", "nope"], "unknown env"),
    (["render", "--env", "tabletop-push", "--episodes", "0"], "--episodes"),
    (["render", "--env", "tabletop-push", "--episodes", "-1"], "--episodes"),
    (["render", "--env", "tabletop-push", "--steps", "0"], "--steps"),
    (["render", "--env", "tabletop-push", "--noise", "-0.1"], "--noise"),
    (["render", "--env", "tabletop-push", "--size", "abc"], "--size"),
    (["render", "--env", "tabletop-push", "--fps", "0"], "--fps"),
    (["render", "--env", "tabletop-push", "--split", "bogus"], "split"),
    (["render", "--env", "tabletop-push", "--policy", NOPE], NOPE),
    (["render", "--env", "pointmaze-u", "--policy", "expert"], "expert"),
    (["render", "--env", "tabletop-push", "--out", "video.txt"], "--out"),
    (["render", "--env", "tabletop-push", "--out", EMPTY], "--out"),
    (["render", "--env", "tabletop-push", "--out", FILE + "/x.gif"], FILE),
    # ---- envs, presets
    (["envs", "--bogus"], "--bogus"),
    (["presets", "extra"], "extra"),
    # ---- data
    (["data", "bogus"], "unknown data subcommand"),
    (["data", "info"], "missing"),
    (["data", "info", NOPE], NOPE),
    (["data", "info", FILE], FILE),
    (["data", "info", EMPTY], EMPTY),
    (["data", "validate", NOPE], NOPE),
    (["data", "validate", FILE], FILE),
    (["data", "stats", NOPE], NOPE),
    (["data", "stats", EMPTY], EMPTY),
    (["data", "render", NOPE], NOPE),
    (["data", "render", NOPE, "--episodes", "abc"], "--episodes"),
    (["data", "render", EMPTY, "--episodes", "-1"], None),
    (["data", "merge"], "missing"),
    (["data", "merge", NOPE, "--out", "merged"], NOPE),
    (["data", "merge", FILE, "--out", "merged"], FILE),
    (["data", "split", NOPE, "--out", "parts"], NOPE),
    (["data", "split", NOPE, "--out", "parts", "--val-fraction", "-0.1"], "val"),
    (["data", "split", NOPE, "--out", "parts", "--val-fraction", "1.5"], "val"),
    (["data", "record"], "--out"),
    (["data", "record", "--out", "rec", "--episodes", "0"], "episodes"),
    (["data", "record", "--out", "rec", "--episodes", "-1"], "episodes"),
    (["data", "record", "--out", "rec", "--episodes", "abc"], "--episodes"),
    (["data", "record", "--out", "rec", "--noise", "-0.1"], "noise"),
    (["data", "record", "--out", "rec", "--image-size", "0"], "image"),
    (["data", "record", "--out", "rec", "--env", "nope"], "nope"),
    (["data", "record", "--out", "rec", "--env", "pointmaze-u"], "pointmaze-u"),
    (["data", "record", "--out", FILE], FILE),
    # ---- serve
    (["serve"], "--policy"),
    (["serve", NOPE], NOPE),
    (["serve", FILE], FILE),
    (["serve", EMPTY], EMPTY),
    (["serve", "--policy", "nope"], "nope"),
    (["serve", "--policy", "random-mlp", "--port", "-1"], "port"),
    (["serve", "--policy", "random-mlp", "--port", "70000"], "port"),
    (["serve", "--policy", "random-mlp", "--port", "abc"], "--port"),
    (["serve", "--policy", "random-mlp", "--max-batch", "0"], "batch"),
    (["serve", "--policy", "random-mlp", "--batch-wait-ms", "-1"], "wait"),
    (["serve", "--policy", "random-mlp", "--max-request-mb", "0"], "request"),
    # ---- run-robot
    (["run-robot", "--server", "htp:/x"], "htp:/x"),
    (["run-robot", "--server", "localhost:8000"], "localhost:8000"),
    (["run-robot", *NO_SERVER, "--episodes", "0"], "episodes"),
    (["run-robot", *NO_SERVER, "--episodes", "-1"], "episodes"),
    (["run-robot", *NO_SERVER, "--episodes", "abc"], "--episodes"),
    (["run-robot", *NO_SERVER, "--task", "nope"], "nope"),
    (["run-robot", *NO_SERVER, "--latency-ms", "-1"], "latency"),
    (["run-robot", *NO_SERVER, "--fallback", "bogus"], "fallback"),
    (["run-robot", *NO_SERVER, "--image-size", "0"], "image"),
    (["run-robot", *NO_SERVER, "--record", FILE], FILE),
    # ---- flywheel
    (["flywheel", "--rounds", "0"], "rounds"),
    (["flywheel", "--rounds", "-1"], "rounds"),
    (["flywheel", "--rounds", "abc"], "--rounds"),
    (["flywheel", "--demos", "0"], "demos"),
    (["flywheel", "--lr", "-1"], "lr"),
    (["flywheel", "--demo-noise", "-0.1"], "noise"),
    (["flywheel", "--env", "nope"], "nope"),
    (["flywheel", "--run-dir", FILE], FILE),
    (["flywheel", "--resume", "--run-dir", NOPE], NOPE),
    # ---- demo
    (["demo", "--bogus"], "--bogus"),
    (["demo", "--rounds", "0"], "rounds"),
    (["demo", "--lr", "-1"], "lr"),
    (["demo", "--env", "nope"], "nope"),
    (["demo", "--run-dir", FILE], FILE),
    # ---- label
    (["label"], "missing"),
    (["label", NOPE], NOPE),
    (["label", FILE], FILE),
    (["label", EMPTY], EMPTY),
]


class TookTooLong(BaseException):
    """The case did not fail within TIMEOUT_S: it started working (BaseException: main()
    must not turn it into an error line)."""


class ServingStarted(BaseException):
    pass


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> a digest of its content ("dir" for directories)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _id(case: tuple[list[str], str | None]) -> str:
    return " ".join(case[0]) or "-"


@pytest.mark.parametrize("argv, expect", CASES, ids=[_id(c) for c in CASES])
def test_bad_arguments_fail_fast_with_one_line(argv, expect, tmp_path, monkeypatch, capsys):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "afile.txt").write_text("not a directory\n")
    (work / "empty").mkdir()
    nope = tmp_path / "elsewhere" / "nope"
    subs = {FILE: "afile.txt", EMPTY: "empty", NOPE: str(nope)}
    argv = [subs.get(a, a).replace(FILE, "afile.txt") for a in argv]
    expect = None if expect is None else subs.get(expect, expect)
    monkeypatch.chdir(work)
    # A server that started would serve forever: stop it at once (everything `serve` checks
    # happens before run_server is called).
    import anyskill.serve.server

    def no_serving(*args, **kwargs):
        raise ServingStarted("anyskill serve started serving")

    monkeypatch.setattr(anyskill.serve.server, "run_server", no_serving)
    before = tree(work)

    def alarm(signum, frame):
        raise TookTooLong(f"no error within {TIMEOUT_S} s: the command started working")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIMEOUT_S)
    try:
        code = main(argv)
    except SystemExit as e:  # a parse error that escaped main()
        code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    report = f"argv={argv}\nexit={code}\nstdout={out[-800:]!r}\nstderr={err[-1500:]!r}"
    assert code == 2, report
    assert len(lines) == 1, report
    assert out == "", report
    if expect is not None:
        assert expect.lower() in lines[0].lower(), report
    assert tree(work) == before, f"{report}\nthe working directory changed"
    assert not nope.parent.exists(), f"{report}\n{nope.parent} was created"


@pytest.mark.parametrize(
    "argv, words",
    [
        # tyro draws its box differently on a real stderr than under capsys: condensed alike
        (["data", "record", "--out", "x", "--epsiodes", "3"], ["did you mean --episodes?"]),
        (["data", "record", "--out", "x", "--episodes", "abc"], ["--episodes", "'abc'"]),
        (["eval", "afile.txt"], ["afile.txt"]),
    ],
)
def test_a_real_process_prints_one_line(argv, words, tmp_path):
    import subprocess
    import sys

    (tmp_path / "afile.txt").write_text("not a directory\n")
    before = tree(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "anyskill.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == "" and len(lines) == 1, done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert tree(tmp_path) == before
