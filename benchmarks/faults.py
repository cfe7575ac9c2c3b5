"""Fault benchmark (issue 22): kill the commands that write state, run writers against each
other, abuse the server beside good clients, and count what survived and what was lost.

    python benchmarks/faults.py kills   --trials 1            # SIGKILL record/train/flywheel, resume
    python benchmarks/faults.py writers --trials 1            # two `data record --out D` at once
    python benchmarks/faults.py abuse   [serve_abuse flags]   # benchmarks/serve_abuse.py main(argv)
    python benchmarks/faults.py all     --trials 3 --max-minutes 60

``kills``: every target (``record``: ``anyskill data record`` without and with camera images;
``crl``: ``anyskill train crl``; ``policy``: ``anyskill train policy``; ``flywheel``) first runs
once uninterrupted (the reference: its wall time, its final metrics and checkpoint). Then each
trial runs the same command as a subprocess and SIGKILLs it (its whole process group) at a
seeded random time, up to ``--kills`` times, continuing it after each kill the way a user would
(``--resume``, or for ``data record`` the same command on the same ``--out`` for the episodes
still missing), until it finishes. Kill times are uniform over the reference's run time
(``--window full``, measured from the launch) or over the reference's span from its first
commit (episode, metrics row, checkpoint, flywheel phase) to its last one (``--window work``,
the default, measured from this run's first commit: most of a short CPU run is imports and
XLA compilation, where a kill can lose nothing). A continued run's window is scaled by the
fraction of the work it still has to do.

What a trial checks:

* episodes lost: ``meta/info.json``'s committed episode count read just before each kill,
  against ``anyskill data info`` right after it (the writer's commit point is info.json, so a
  finished episode must still be there); at the end ``anyskill data validate`` passes and every
  recorded episode index appears exactly once;
* metrics rows lost: every row present in ``metrics.jsonl`` before a kill is in the final file;
  the final rows' steps are strictly increasing, without gaps or duplicates, and are the
  reference's steps; the final checkpoint loads and is at the last step;
* bit-for-bit: the final metrics (timing columns excluded) and checkpoint arrays against the
  uninterrupted reference (CRL claims this; the other targets are reported as found).

``writers``: two ``anyskill data record --out D`` at once, a second one started while the first
is mid-way, and one started after the first was SIGKILLed mid-way (a stale lock must not
refuse it). Counts processes refused (non-zero exit), episodes each process reported finishing
and episodes present at the end.

Peak memory is each child's VmHWM (``/proc/PID/status``, sampled every 20 ms while it runs;
``ru_maxrss`` from ``wait4`` if that failed). Everything runs in a new directory under
``--work`` (default: the system's temp dir), deleted at the end unless ``--keep``, with the
children's dataset cache there too. Results go to benchmarks/results/faults.md (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANYSKILL = [sys.executable, "-m", "anyskill.cli"]
#: metrics columns that measure time, not learning: left out of the bit-for-bit comparison
TIMING = {"wall_time", "env_steps_per_s", "train_seconds", "samples_per_s", "eval_seconds"}

# --------------------------------------------------------------------------- sizes
# Small enough for a 2-core machine shared with others; each is a few seconds of real work
# after the imports and compilations.
RECORD_EPISODES = 48
RECORD = ["--env", "tabletop-reach", "--seed", "0"]
IMAGES = ["--images", "--image-size", "16"]
CRL = (
    "--preset arena-smoke --num-envs 8 --batch-size 16 --replay-capacity 20 --min-replay-steps 10"
    " --critic-width 16 --actor-width 16 --num-eval-envs 8 --total-env-steps 4000 --num-epochs 6"
    " --unroll-length 5 --updates-per-unroll 2 --no-video --no-progress"
).split()
POLICY_DATA_EPISODES = 16
POLICY_STEPS, POLICY_EVAL_EVERY = 120, 10
POLICY = (
    "--model.arch mlp-bc --model.mlp-width 64 --model.depth 2 --model.horizon 5"
    f" --steps {POLICY_STEPS} --eval-every {POLICY_EVAL_EVERY} --eval-episodes 0"
    " --batch-size 32 --warmup-steps 10 --no-progress"
).split()
# the tiny settings of tests/flywheel/test_loop.py::tiny
FW_DEMOS, FW_EPISODES, FW_ROUNDS = 24, 16, 1
FLYWHEEL = (
    f"--env tabletop-reach --rounds {FW_ROUNDS} --demos {FW_DEMOS} --init-steps 60"
    f" --episodes-per-round {FW_EPISODES} --policy-steps 30 --batch-size 32"
    " --model.arch mlp-flow --model.mlp-width 64 --model.depth 2 --model.width 32"
    " --model.horizon 5 --value.steps 30 --value.finetune-steps 10 --value.batch-size 32"
    " --value.hidden 32 --corrector.fraction 1.0 --corrector.stall-window 10"
    " --eval-episodes 16 --no-videos --no-progress"
).split()


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Run:
    """One child process: how it ended, what it used, what it saw before a kill."""

    argv: list[str]
    log: Path
    rc: int | None = None
    killed: bool = False
    hung: bool = False
    seconds: float = 0.0
    maxrss_mb: float = 0.0
    t_first_write: float | None = None  # seconds from launch to the first change of progress()
    t_last_write: float | None = None  # ... to its last change
    kill_at: float | None = None  # seconds from launch
    before_kill: dict | None = None
    vmhwm_mb: float = 0.0

    def last_error(self, width: int = 200) -> str:
        try:
            lines = [ln.strip() for ln in self.log.read_text(errors="replace").splitlines()]
        except OSError:
            return ""
        lines = [ln for ln in lines if ln and not ln.startswith(("recording:", "WARNING"))]
        return lines[-1][:width] if lines else ""


def mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def child_env(work: Path) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", ANYSKILL_CACHE=str(work / "dataset-cache"))
    return env


def run(
    argv: list[str],
    log: Path,
    env: dict,
    *,
    progress: Callable[[], object] | None = None,
    kill_after: float | None = None,
    anchor: str = "work",
    snapshot: Callable[[], dict] | None = None,
    timeout: float = 900.0,
    on_first_write: Callable[[], None] | None = None,
) -> Run:
    """Run ``argv`` to the end, or SIGKILL it ``kill_after`` seconds after its launch
    (``anchor="full"``) or after the first change of ``progress()`` (``anchor="work"``: the
    first episode, metrics row or checkpoint this run commits).
    ``snapshot()`` is taken just before the kill."""
    r = Run(list(argv), log)
    log.parent.mkdir(parents=True, exist_ok=True)
    p0 = progress() if progress else None
    with open(log, "wb") as out:
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        t0 = time.monotonic()
        try:
            status, usage = _watch(p.pid, r, t0, p0, progress, kill_after, anchor, snapshot,
                                   timeout, on_first_write)  # fmt: skip
        finally:  # also on Ctrl-C: the child runs in its own session and would outlive us
            _killpg(p.pid)  # and anything it left in its group
        p.returncode = os.waitstatus_to_exitcode(status)
    r.seconds = time.monotonic() - t0
    r.rc = p.returncode
    # ru_maxrss of a child of a big parent starts at the parent's peak (exec keeps the
    # high-water mark of the mm it replaces), so VmHWM sampled while it ran comes first
    r.maxrss_mb = r.vmhwm_mb or usage.ru_maxrss / 1024
    return r


def vmhwm_mb(pid: int) -> float:
    """Peak resident set of a live process (``/proc/PID/status`` VmHWM), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _watch(pid, r: Run, t0, p0, progress, kill_after, anchor, snapshot, timeout, on_first):
    """Poll the child until it exits, or is due for its kill (or hangs): then SIGKILL it.
    Returns its ``(wait status, rusage)``."""
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        now = time.monotonic() - t0
        r.vmhwm_mb = max(r.vmhwm_mb, vmhwm_mb(pid))
        if progress:
            v = progress()
            if v != p0:
                p0, r.t_last_write = v, now
                if r.t_first_write is None:
                    r.t_first_write = now
                    if on_first is not None:
                        on_first()
        start = 0.0 if anchor == "full" else r.t_first_write
        due = kill_after is not None and start is not None and now >= start + kill_after
        if due or now > timeout:
            if due:
                r.before_kill = snapshot() if snapshot else None
                r.killed, r.kill_at = True, now
            else:
                r.hung = True
            _killpg(pid)
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        time.sleep(0.02)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def anyskill_json(args: list[str], env: dict) -> tuple[int, dict | None, str]:
    """Run a quick ``anyskill`` command; ``(rc, its JSON stdout or None, last stderr line)``."""
    p = subprocess.run([*ANYSKILL, *args], capture_output=True, text=True, env=env)
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        out = None
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return p.returncode, out, (err[-1][:200] if err else "")


# --------------------------------------------------------------------------- reading state


def committed_episodes(root: Path) -> int | None:
    """The writer's commit point: ``meta/info.json``'s total (an atomic file)."""
    try:
        return int(json.loads((root / "meta" / "info.json").read_text())["total_episodes"])
    except (OSError, ValueError, KeyError):
        return None


def metrics_rows(path: Path) -> list[dict]:
    """Complete, parseable lines only (a line cut by a kill is not a row)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is unfinished
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append({"_torn": line[:80]})
    return rows


def episode_table(root: Path) -> list[dict]:
    from anyskill.data.reader import Dataset

    ds = Dataset.open(root, mmap=False)
    acts = ds.columns["action"]
    out = []
    for e, row in enumerate(ds._rows):
        a, b = int(ds.episodes.start[e]), int(ds.episodes.stop[e])
        out.append(
            {
                "seed": row.get("env_seed"),
                "episode": row.get("env_episode"),
                "policy_version": row.get("policy_version"),
                "source": row.get("source"),
                "length": int(row["length"]),
                "actions": acts[a:b].tobytes(),
            }
        )
    return out


def checkpoint_arrays(path: Path) -> dict:
    import numpy as np
    from flax import serialization, traverse_util

    payload = serialization.msgpack_restore(path.read_bytes())
    flat = traverse_util.flatten_dict(payload["state"], keep_empty_nodes=True)
    return {k: np.asarray(v) for k, v in flat.items() if hasattr(v, "shape") or np.isscalar(v)}


def compare_checkpoints(a: Path, b: Path) -> str:
    import numpy as np

    try:
        x, y = checkpoint_arrays(a), checkpoint_arrays(b)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return f"unreadable ({type(e).__name__}: {e})"[:120]
    if set(x) != set(y):
        return "different structure"
    diff = 0.0
    n_diff = 0
    for k in x:
        if x[k].shape != y[k].shape:
            return f"shape differs at {'/'.join(map(str, k))}"
        if not np.array_equal(x[k], y[k]):
            n_diff += 1
            if np.issubdtype(x[k].dtype, np.number):
                diff = max(diff, float(np.max(np.abs(x[k].astype(float) - y[k].astype(float)))))
    return "identical" if n_diff == 0 else f"{n_diff}/{len(x)} arrays differ (max |Δ| {diff:.3g})"


def compare_rows(rows: list[dict], ref: list[dict]) -> str:
    if len(rows) != len(ref):
        return f"{len(rows)} rows vs {len(ref)}"
    worst, n = 0.0, 0
    for r, q in zip(rows, ref, strict=True):
        for k in set(r) | set(q):
            if k in TIMING:
                continue
            a, b = r.get(k), q.get(k)
            if a != b and not (a != a and b != b):  # NaN equals NaN here
                n += 1
                if isinstance(a, int | float) and isinstance(b, int | float):
                    worst = max(worst, abs(a - b))
    return "identical" if n == 0 else f"{n} values differ (max |Δ| {worst:.3g})"


# --------------------------------------------------------------------------- targets


@dataclasses.dataclass
class Outcome:
    """The verdict of a trial's final state."""

    ok: bool
    notes: list[str]
    lost_episodes: int = 0
    lost_rows: int = 0
    bitwise: str = ""


class Target:
    """A command that writes state, how to continue it after a kill, and what must hold."""

    name = ""
    unit = "episodes"

    def __init__(self, work: Path, env: dict):
        self.work, self.env = work, env

    def prepare(self) -> None:
        """Shared inputs of every trial (a dataset to train on)."""

    def fresh(self, d: Path) -> list[str]:
        raise NotImplementedError

    def resume(self, d: Path) -> list[str] | None:
        """The command that continues after a kill (None: nothing left to do)."""
        raise NotImplementedError

    def progress(self, d: Path) -> object:
        """Changes when the command commits something (an episode, a row, a checkpoint)."""
        raise NotImplementedError

    def snapshot(self, d: Path) -> dict:
        raise NotImplementedError

    def remaining(self, d: Path) -> float:
        """Fraction of the work still to do (scales the kill window of a continued run)."""
        return 1.0

    def after_kill(self, d: Path, before: dict) -> tuple[int, list[str]]:
        """Units lost by this kill (present before, missing now) and notes."""
        return 0, []

    def verify(self, d: Path, ref: Path, befores: list[dict]) -> Outcome:
        raise NotImplementedError


class RecordTarget(Target):
    name = "record"

    def __init__(self, work, env, images: bool):
        super().__init__(work, env)
        self.images = images
        self.name = "record --images" if images else "record"
        self.extra = IMAGES if images else []
        self._have: int | None = None

    def _argv(self, d: Path, episodes: int) -> list[str]:
        out = d / "data"
        return [*ANYSKILL, "data", "record", "--out", str(out), "--episodes", str(episodes),
                *RECORD, *self.extra]  # fmt: skip

    def fresh(self, d):
        self._have = None
        return self._argv(d, RECORD_EPISODES)

    def resume(self, d):
        have = self._have or 0
        if have >= RECORD_EPISODES:
            return None
        return self._argv(d, RECORD_EPISODES - have)

    def progress(self, d):
        return committed_episodes(d / "data") or 0

    def snapshot(self, d):
        return {"episodes": committed_episodes(d / "data")}

    def remaining(self, d):
        return max(RECORD_EPISODES - (committed_episodes(d / "data") or 0), 1) / RECORD_EPISODES

    def after_kill(self, d, before):
        pre = before.get("episodes")
        if not (d / "data").exists():
            self._have = 0
            return 0, []
        rc, info, err = anyskill_json(["data", "info", str(d / "data")], self.env)
        if rc != 0 or info is None:
            self._have = 0
            if pre:  # there was a committed dataset and now it does not open
                return pre, [f"data info failed after a kill with {pre} committed: {err}"]
            return 0, [f"data info after a kill before the first commit: {err}"[:160]]
        self._have = int(info["episodes"])
        lost = max(0, (pre or 0) - self._have)
        return lost, ([f"{pre} committed before the kill, {self._have} after"] if lost else [])

    def verify(self, d, ref, befores):
        notes = []
        rc, rep, err = anyskill_json(["data", "validate", str(d / "data")], self.env)
        ok = rc == 0
        if not ok:
            notes.append(f"validate failed: {err}")
            return Outcome(False, notes)
        eps = episode_table(d / "data")
        idx = [e["episode"] for e in eps]
        if sorted(idx) != list(range(RECORD_EPISODES)):
            dup = len(idx) - len(set(idx))
            missing = sorted(set(range(RECORD_EPISODES)) - set(idx))
            notes.append(
                f"episode indices: {len(idx)} present, {dup} duplicated, missing {missing[:8]}"
            )
            ok = False
        ref_eps = {e["episode"]: e for e in episode_table(ref / "data")}
        same = sum(
            1
            for e in eps
            if e["episode"] in ref_eps
            and ref_eps[e["episode"]]["actions"] == e["actions"]
            and ref_eps[e["episode"]]["length"] == e["length"]
        )
        bitwise = (
            "identical"
            if same == len(eps) == len(ref_eps)
            else f"{same}/{len(ref_eps)} episodes identical"
        )
        return Outcome(ok, notes, bitwise=bitwise)


class RunDirTarget(Target):
    """A training run: metrics.jsonl rows keyed by ``key``, checkpoint.msgpack, --resume."""

    unit = "rows"
    key = "step"
    expect_rows: list[int] = []

    def run_dir(self, d: Path) -> Path:
        return d / "run"

    def progress(self, d):
        r = self.run_dir(d)
        return len(metrics_rows(r / "metrics.jsonl")), mtime(r / "checkpoint.msgpack")

    def snapshot(self, d):
        rows = metrics_rows(self.run_dir(d) / "metrics.jsonl")
        return {"rows": [r for r in rows if "_torn" not in r]}

    def remaining(self, d):
        done = len(metrics_rows(self.run_dir(d) / "metrics.jsonl"))
        return max(len(self.expect_rows) - done, 1) / len(self.expect_rows)

    def load_checkpoint(self, run_dir: Path) -> int:
        raise NotImplementedError

    def verify(self, d, ref, befores):
        r = self.run_dir(d)
        notes = []
        rows = metrics_rows(r / "metrics.jsonl")
        torn = [x for x in rows if "_torn" in x]
        rows = [x for x in rows if "_torn" not in x]
        keys = [x[self.key] for x in rows]
        ok = True
        if torn:
            notes.append(f"{len(torn)} unparseable metrics line(s)")
            ok = False
        if keys != self.expect_rows:
            dup = len(keys) - len(set(keys))
            missing = sorted(set(self.expect_rows) - set(keys))
            notes.append(
                f"{self.key}s {keys} (expected {self.expect_rows[0]}..{self.expect_rows[-1]}):"
                f" {dup} duplicated, missing {missing}"
            )
            ok = False
        lost = set()
        changed = 0
        final = {x[self.key]: x for x in rows}
        for b in befores:
            for x in b.get("rows", []):
                if x[self.key] not in final:
                    lost.add(x[self.key])
                elif {k: v for k, v in x.items() if k not in TIMING} != {
                    k: v for k, v in final[x[self.key]].items() if k not in TIMING
                }:
                    changed += 1
        if lost:
            notes.append(f"rows present before a kill and missing at the end: {sorted(lost)}")
        if changed:
            notes.append(f"{changed} row(s) written before a kill were rewritten with other values")
        try:
            at = self.load_checkpoint(r)
            if at != self.expect_rows[-1]:
                notes.append(f"checkpoint at {self.key} {at}, expected {self.expect_rows[-1]}")
                ok = False
        except Exception as e:  # noqa: BLE001 - the verdict, not a crash of the benchmark
            notes.append(f"checkpoint does not load: {type(e).__name__}: {e}"[:200])
            ok = False
        ref_rows = metrics_rows(self.run_dir(ref) / "metrics.jsonl")
        bitwise = f"metrics {compare_rows(rows, ref_rows)}; checkpoint " + compare_checkpoints(
            r / "checkpoint.msgpack", self.run_dir(ref) / "checkpoint.msgpack"
        )
        return Outcome(ok and not lost, notes, lost_rows=len(lost), bitwise=bitwise)


class CRLTarget(RunDirTarget):
    name = "train crl"
    key = "epoch"
    expect_rows = list(range(6))

    def fresh(self, d):
        return [*ANYSKILL, "train", "crl", *CRL, "--run-dir", str(self.run_dir(d))]

    def resume(self, d):
        if not (self.run_dir(d) / "config.json").exists():
            return self.fresh(d)  # killed before the run existed: start it again
        return [*ANYSKILL, "train", "crl", "--run-dir", str(self.run_dir(d)), "--resume",
                "--no-video", "--no-progress"]  # fmt: skip

    def load_checkpoint(self, run_dir):
        from anyskill.algos.crl.run import load_trained

        _, _, meta = load_trained(run_dir)
        return int(meta["epoch"])


class PolicyTarget(RunDirTarget):
    name = "train policy"
    key = "step"
    expect_rows = list(range(POLICY_EVAL_EVERY, POLICY_STEPS + 1, POLICY_EVAL_EVERY))

    @property
    def data(self) -> Path:
        return self.work / "policy-data"

    def prepare(self):
        if committed_episodes(self.data) == POLICY_DATA_EPISODES:
            return
        argv = [*ANYSKILL, "data", "record", "--out", str(self.data),
                "--episodes", str(POLICY_DATA_EPISODES), *RECORD]  # fmt: skip
        r = run(argv, self.work / "policy-data.log", self.env)
        if r.rc != 0:
            raise RuntimeError(f"recording the policy's dataset failed: {r.last_error()}")

    def fresh(self, d):
        return [*ANYSKILL, "train", "policy", "--data", str(self.data), *POLICY,
                "--run-dir", str(self.run_dir(d))]  # fmt: skip

    def resume(self, d):
        if not (self.run_dir(d) / "checkpoint.msgpack").exists():
            return self.fresh(d)  # killed before the first checkpoint: start it again
        # as a user continues a run: its directory and --resume (the config is the run's)
        return [*ANYSKILL, "train", "policy", "--run-dir", str(self.run_dir(d)), "--resume",
                "--no-progress"]  # fmt: skip

    def load_checkpoint(self, run_dir):
        from anyskill.algos.vla.train import load_run

        *_, meta = load_run(run_dir)
        return int(meta["step"])


class FlywheelTarget(Target):
    name = "flywheel"

    def run_dir(self, d: Path) -> Path:
        return d / "run"

    def fresh(self, d):
        return [*ANYSKILL, "flywheel", *FLYWHEEL, "--run-dir", str(self.run_dir(d))]

    def resume(self, d):
        if not (self.run_dir(d) / "config.json").exists():
            return self.fresh(d)
        return [*self.fresh(d), "--resume"]

    def progress(self, d):
        r = self.run_dir(d)
        return (
            committed_episodes(r / "data") or 0,
            mtime(r / "start" / "checkpoint.msgpack"),
            mtime(r / "state.json"),
            mtime(r / "value.msgpack"),
        )

    def snapshot(self, d):
        r = self.run_dir(d)
        try:
            st = json.loads((r / "state.json").read_text())
            phase = f"round {st['round']} after {st['done'][-1] if st['done'] else 'nothing'}"
        except (OSError, ValueError, KeyError):
            phase = "setup"
        return {"episodes": committed_episodes(r / "data"), "phase": phase}

    def after_kill(self, d, before):
        pre = before.get("episodes")
        data = self.run_dir(d) / "data"
        if not pre:
            return 0, []
        rc, info, err = anyskill_json(["data", "info", str(data)], self.env)
        if rc != 0 or info is None:
            return pre, [f"data info failed after a kill with {pre} committed: {err}"]
        lost = max(0, pre - int(info["episodes"]))
        return lost, (
            [f"{pre} committed before the kill, {info['episodes']} after"] if lost else []
        )

    def verify(self, d, ref, befores):
        r = self.run_dir(d)
        notes = []
        ok = True
        try:
            st = json.loads((r / "state.json").read_text())
        except (OSError, ValueError) as e:
            return Outcome(False, [f"state.json unreadable: {e}"])
        if st.get("round") != FW_ROUNDS + 1 or st.get("done"):
            notes.append(f"state.json round {st.get('round')} done {st.get('done')}")
            ok = False
        if not (r / "report.md").exists():
            notes.append("no report.md")
            ok = False
        rc, _, err = anyskill_json(["data", "validate", str(r / "data")], self.env)
        if rc != 0:
            return Outcome(False, [*notes, f"validate failed: {err}"])
        eps = episode_table(r / "data")
        counts: dict[str, int] = {}
        for e in eps:
            counts[e["policy_version"]] = counts.get(e["policy_version"], 0) + 1
        demos = sum(1 for e in eps if e["source"] == "demonstration")
        want = {f"recap-r{k}": FW_EPISODES for k in range(FW_ROUNDS)}
        got = {k: v for k, v in counts.items() if k.startswith("recap-r")}
        if demos != FW_DEMOS or got != want:
            notes.append(
                f"episodes: {demos} demonstrations (want {FW_DEMOS}), rounds {got} (want {want})"
            )
            ok = False
        ref_st = json.loads((self.run_dir(ref) / "state.json").read_text())
        ref_eps = episode_table(self.run_dir(ref) / "data")
        same_eps = sum(
            1 for a, b in zip(eps, ref_eps, strict=False) if a["actions"] == b["actions"]
        )
        bitwise = (
            f"results {compare_rows(st.get('rows', []), ref_st.get('rows', []))}; "
            f"{same_eps}/{len(ref_eps)} episodes identical"
        )
        return Outcome(ok, notes, bitwise=bitwise)


def make_targets(names: list[str], work: Path, env: dict) -> list[Target]:
    table = {
        "record": lambda: RecordTarget(work, env, images=False),
        "record-images": lambda: RecordTarget(work, env, images=True),
        "crl": lambda: CRLTarget(work, env),
        "policy": lambda: PolicyTarget(work, env),
        "flywheel": lambda: FlywheelTarget(work, env),
    }
    return [table[n]() for n in names]


TARGETS = ["record", "record-images", "crl", "policy", "flywheel"]


# --------------------------------------------------------------------------- kills


@dataclasses.dataclass
class TrialResult:
    target: str
    trial: int
    kills: list[float]
    runs: int
    survived: bool
    lost: int
    notes: list[str]
    bitwise: str
    peak_mb: float
    seconds: float


class Clock:
    def __init__(self, max_minutes: float):
        self.t0 = time.monotonic()
        self.deadline = self.t0 + 60 * max_minutes

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def kill_trials(target: Target, args, clock: Clock) -> tuple[dict, list[TrialResult]]:
    base = Path(args.work) / re.sub(r"\W+", "-", target.name)
    shutil.rmtree(base, ignore_errors=True)
    target.prepare()
    ref_dir = base / "reference"
    ref = run(
        target.fresh(ref_dir),
        ref_dir / "run-0.log",
        target.env,
        progress=lambda: target.progress(ref_dir),
    )
    info = {
        "seconds": ref.seconds,
        "first_write": ref.t_first_write,
        "peak_mb": ref.maxrss_mb,
        "ok": ref.rc == 0,
        "error": "" if ref.rc == 0 else ref.last_error(),
    }
    print(
        f"[{target.name}] reference: {ref.seconds:.1f} s (first write at "
        f"{ref.t_first_write if ref.t_first_write is None else round(ref.t_first_write, 1)} s), "
        f"peak {ref.maxrss_mb:.0f} MB, exit {ref.rc}",
        flush=True,
    )
    if ref.rc != 0:
        return info, []
    if args.window == "full" or ref.t_first_write is None:
        window, anchor = ref.seconds, "full"
    else:
        # from the first commit to the last one: a kill after the last commit, while the
        # process exits, tests nothing (and misses when a run is a little faster)
        span = ref.t_last_write - ref.t_first_write
        window, anchor = (span if span > 1.0 else ref.seconds - ref.t_first_write), "work"
    since = "launch" if anchor == "full" else "first commit"
    print(f"[{target.name}] kill window: {window:.1f} s from the {since}", flush=True)
    info.update(window=window, anchor=anchor)
    timeout = max(6 * ref.seconds, 180.0)
    trials = (
        args.flywheel_trials if target.name == "flywheel" and args.flywheel_trials else args.trials
    )
    results = []
    for i in range(trials):
        if clock.left() < ref.seconds * (args.kills + 1):
            print(
                f"[{target.name}] --max-minutes reached: {trials - i} trial(s) skipped", flush=True
            )
            info["skipped"] = trials - i
            break
        rng = random.Random(f"{args.seed}/{target.name}/{i}")
        d = base / f"trial-{i}"
        argv = target.fresh(d)
        kills, lost, notes, befores, peak, runs = [], 0, [], [], 0.0, 0
        t_trial = time.monotonic()
        ok = True
        while argv is not None:
            # uniform over the reference's time for the work still to do
            span = window * (target.remaining(d) if kills else 1.0)
            kill_after = rng.uniform(0, span) if len(kills) < args.kills else None
            r = run(
                argv,
                d / f"run-{runs}.log",
                target.env,
                progress=lambda d=d: target.progress(d),
                kill_after=kill_after,
                anchor=anchor,
                snapshot=lambda d=d: target.snapshot(d),
                timeout=timeout,
            )
            runs += 1
            peak = max(peak, r.maxrss_mb)
            if r.killed:
                kills.append(r.kill_at)
                befores.append(r.before_kill or {})
                n, why = target.after_kill(d, r.before_kill or {})
                lost += n
                notes += why
                argv = target.resume(d)
                continue
            if r.hung:
                notes.append(f"run {runs} still running after {timeout:.0f} s: killed")
                ok = False
            elif r.rc != 0:
                notes.append(f"run {runs} exit {r.rc}: {r.last_error()}")
                ok = False
            if kill_after is not None:
                notes.append(f"run {runs} ended before its kill at +{kill_after:.1f} s")
            break
        if ok:
            try:
                out = target.verify(d, ref_dir, befores)
            except Exception as e:  # noqa: BLE001 - a state the checks cannot read is a failure
                out = Outcome(False, [f"checking the final state raised {type(e).__name__}: {e}"])
            ok = out.ok and lost == 0
            notes += out.notes
            lost += out.lost_episodes + out.lost_rows
            bitwise = out.bitwise
        else:
            bitwise = "-"
        res = TrialResult(
            target.name, i, kills, runs, ok, lost, notes, bitwise, peak, time.monotonic() - t_trial
        )
        results.append(res)
        print(
            f"[{target.name}] trial {i + 1}/{trials}: {len(kills)} kill(s) at "
            f"{', '.join(f'{k:.1f}' for k in kills) or '-'} s, {runs} run(s), "
            f"{'survived' if ok else 'FAILED'}, lost {lost} {target.unit}, bit-for-bit: {bitwise}"
            f"{'; ' + '; '.join(notes) if notes else ''} ({res.seconds:.0f} s,"
            f" elapsed {clock.elapsed() / 60:.1f} min)",
            flush=True,
        )
    return info, results


def kills_section(names: list[str], args, clock: Clock, env: dict) -> list[str]:
    rows, detail = [], []
    for target in make_targets(names, Path(args.work), env):
        if clock.left() <= 0:
            rows.append(f"| {target.name} | 0 | - | - | - | - | - | - | skipped: --max-minutes |")
            continue
        info, res = kill_trials(target, args, clock)
        if not info["ok"]:
            rows.append(
                f"| {target.name} | 0 | - | - | - | - | - | {info['peak_mb']:.0f} |"
                f" reference run failed: {info['error']} |"
            )
            continue
        kills = sum(len(r.kills) for r in res)
        survived = sum(r.survived for r in res)
        lost = sum(r.lost for r in res)
        bits = sorted({r.bitwise for r in res if r.survived})
        notes = sorted({n for r in res for n in r.notes if "ended before its kill" not in n})
        if info.get("skipped"):
            notes.append(f"{info['skipped']} trial(s) skipped by --max-minutes")
        peak = max([info["peak_mb"], *(r.peak_mb for r in res)])
        rows.append(
            f"| {target.name} | {len(res)} | {kills} | {survived}/{len(res)} |"
            f" {lost} {target.unit} | {'; '.join(bits) or '-'} | {info['seconds']:.0f}"
            f" (window {info['window']:.0f}) | {peak:.0f} |"
            f" {'; '.join(notes) or '-'} |"
        )
        for r in res:
            detail.append(
                f"| {r.target} | {r.trial} | {', '.join(f'{k:.1f}' for k in r.kills) or '-'} |"
                f" {r.runs} | {'survived' if r.survived else 'FAILED'} | {r.lost} |"
                f" {r.bitwise} | {r.peak_mb:.0f} | {'; '.join(r.notes) or '-'} |"
            )
    return [
        "## SIGKILL and resume",
        "",
        f"{args.trials} trial(s) per target (flywheel: {args.flywheel_trials or args.trials}),"
        f" up to {args.kills} SIGKILL(s) per trial, kill times uniform over the reference's "
        + (
            "run time, from the launch"
            if args.window == "full"
            else "span from its first commit to its last, counted from this run's first commit"
        )
        + " (a continued run: scaled by the fraction of the work left)"
        + f" (seed {args.seed}); after each kill the command is continued as a user would"
        " (`--resume`; `data record` again on the same `--out` for the missing episodes) until"
        " it finishes. Survived: the final state is valid (`data validate`; metrics steps"
        " strictly increasing, no gap or duplicate, the reference's steps; the checkpoint loads"
        " at the last step) and nothing committed before a kill is missing after it.",
        "",
        "| target | trials | kills | survived | lost | final state vs uninterrupted reference |"
        " reference s (kill window s) | peak RSS MB | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Per trial (kill times in seconds after the launch of the run that was killed):",
        "",
        "| target | trial | kills at s | runs | result | lost | vs reference | peak MB | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *detail,
        "",
        "Sizes: `data record --env tabletop-reach --episodes "
        f"{RECORD_EPISODES}` (images: `{' '.join(IMAGES)}`); `train crl {' '.join(CRL)}`;"
        f" `train policy {' '.join(POLICY)}` on {POLICY_DATA_EPISODES} reach episodes;"
        f" `flywheel {' '.join(FLYWHEEL)}`.",
        "",
    ]


# --------------------------------------------------------------------------- writers


def _reported(r: Run, asked: int) -> int:
    """Episodes a `data record` process reported finishing: all it was asked for when it
    exited 0, else the last count its progress bar showed."""
    if r.rc == 0 and not r.killed:
        return asked
    counts = re.findall(rb"recording:\s+\d+%\|[^|]*\|\s*(\d+)/\d+", r.log.read_bytes())
    return int(counts[-1]) if counts else 0


def writer_pair(v: str, d: Path, na: int, nb: int, rng: random.Random, env: dict):
    """Run writer a and writer b into ``d/data`` as variant ``v`` asks; returns their runs,
    when each was launched and ended, and (variant "after the first was killed") a's committed count
    before its kill."""
    import threading

    out = d / "data"
    argv_a = [*ANYSKILL, "data", "record", "--out", str(out), "--episodes", str(na),
              "--env", "tabletop-reach", "--seed", "0"]  # fmt: skip
    argv_b = [*ANYSKILL, "data", "record", "--out", str(out), "--episodes", str(nb),
              "--env", "tabletop-reach", "--seed", "1"]  # fmt: skip
    res: dict[str, Run] = {}
    t_end: dict[str, tuple[float, float]] = {}  # (launched, ended)

    def go(name, argv, **kw):
        t_start = time.monotonic()
        res[name] = run(argv, d / f"{name}.log", env, **kw)
        t_end[name] = (t_start, time.monotonic())

    pre_kill = None
    if v == "at once":
        ta = threading.Thread(target=go, args=("a", argv_a))
        tb = threading.Thread(target=go, args=("b", argv_b))
        ta.start(), tb.start()
        ta.join(), tb.join()
    elif v == "second while the first is mid-way":
        tb = threading.Thread(target=go, args=("b", argv_b))
        ta = threading.Thread(
            target=go,
            args=("a", argv_a),
            kwargs={"progress": lambda: committed_episodes(out) or 0, "on_first_write": tb.start},
        )
        ta.start()
        ta.join()
        if tb.ident is not None:
            tb.join()
    else:
        go(
            "a",
            argv_a,
            progress=lambda: committed_episodes(out) or 0,
            kill_after=rng.uniform(0.5, 3.0),
            snapshot=lambda: {"episodes": committed_episodes(out)},
        )
        pre_kill = (res["a"].before_kill or {}).get("episodes") or 0
        go("b", argv_b)
    return res, t_end, pre_kill


#: refused processes per pair when the writer lock works: one of two live writers; none after
#: a kill (the kernel dropped the dead writer's flock)
EXPECT_REFUSED = {
    "at once": 1,
    "second while the first is mid-way": 1,
    "after the first was killed": 0,
}


def writers_section(args, clock: Clock, env: dict) -> list[str]:
    base = Path(args.work) / "writers"
    shutil.rmtree(base, ignore_errors=True)
    rows, peak = [], 0.0
    variants = list(EXPECT_REFUSED)
    tally = {
        v: {"tried": 0, "refused": 0, "lost": 0, "overlap": 0, "msgs": set()} for v in variants
    }
    pairs = [(i, v) for i in range(args.trials) for v in variants]
    for n, (i, v) in enumerate(pairs):
        if clock.left() < 120:
            print(f"[writers] --max-minutes reached: {len(pairs) - n} run(s) skipped", flush=True)
            rows.append(f"| {len(pairs) - n} run(s) skipped by --max-minutes | | | | | | | | |")
            break
        d = base / f"trial-{i}" / re.sub(r"\W+", "-", v)
        rng = random.Random(f"{args.seed}/writers/{v}/{i}")
        na, nb = (64, 64) if v == "at once" else (256, 32)
        res, t_end, pre_kill = writer_pair(v, d, na, nb, rng, env)
        out = d / "data"
        a, b = res["a"], res.get("b")
        peak = max(peak, a.maxrss_mb, b.maxrss_mb if b else 0)
        rep_a = pre_kill if a.killed else _reported(a, na)
        rep_b = _reported(b, nb) if b else 0
        vrc, _, verr = anyskill_json(["data", "validate", str(out)], env)
        present = committed_episodes(out) or 0
        try:
            distinct = len({(e["seed"], e["episode"]) for e in episode_table(out)})
        except Exception:  # noqa: BLE001 - reported below as a mismatch
            distinct = -1
        refused = [x for x in (a, b) if x is not None and not x.killed and x.rc != 0]
        lost = max(0, rep_a + rep_b - present)
        t = tally[v]
        t["tried"] += 1
        t["refused"] += len(refused)
        t["lost"] += lost
        msgs = [x.last_error(10_000).replace(str(out), "D")[:300] for x in refused]
        t["msgs"].update(msgs)
        # both processes were alive at the same time
        overlap = len(t_end) == 2 and max(t_end["a"][0], t_end["b"][0]) < min(
            t_end["a"][1], t_end["b"][1]
        )
        t["overlap"] += int(overlap)
        note = []
        if vrc != 0:
            note.append(f"validate failed: {verr}")
        if distinct != present:
            note.append(f"{present} episodes but {distinct} distinct (seed, index)")
        print(
            f"[writers] trial {i + 1}/{args.trials} {v}: a exit {a.rc}"
            f"{' (killed)' if a.killed else ''} reported {rep_a}, b exit {b.rc if b else '-'}"
            f" reported {rep_b}, present {present}, lost {lost}; refused: "
            f"{msgs or 'none'}{'; ' + '; '.join(note) if note else ''}",
            flush=True,
        )
        rows.append(
            f"| {v} | {i} | {a.rc}{' (killed)' if a.killed else ''} | {b.rc if b else '-'} |"
            f" {rep_a} + {rep_b} | {present} | {lost} | {'yes' if overlap else 'no'} |"
            f" {'; '.join(msgs + note) or '-'} |"
        )
    summary = [
        f"| {v} | {t['tried']} | {t['refused']} ({EXPECT_REFUSED[v] * t['tried']}) | {t['lost']} |"
        f" {t['overlap']}/{t['tried']} |"
        f" {'; '.join(sorted(m for m in t['msgs'] if m)) or '-'} |"
        for v, t in tally.items()
    ]
    return [
        "## Concurrent writers",
        "",
        "Two `anyskill data record --out D --env tabletop-reach` (seeds 0 and 1): started at"
        " once (64 episodes each); the second (32) started when the first (256) committed its"
        " first episode; the second started after the first was SIGKILLed 0.5–3 s after its"
        " first commit (a stale lock must not refuse it). Reported: episodes each process"
        " reported finishing (all it was asked for on exit 0, else its last progress count; for"
        " the killed one, the committed count before the kill). Lost = reported − present."
        " Overlap: both processes were alive at the same time.",
        "",
        "| variant | tried | refused (expected) | lost | overlap | message of the refused writer |",
        "|---|---|---|---|---|---|",
        *summary,
        "",
        "| variant | trial | first exit | second exit | reported | present | lost | overlap | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Peak RSS of a writer: {peak:.0f} MB.",
        "",
    ]


# --------------------------------------------------------------------------- abuse


def abuse_section(rest: list[str]) -> list[str]:
    path = HERE / "serve_abuse.py"
    if not path.exists():
        msg = f"{path.relative_to(HERE.parent)} is missing: the server-abuse run was not done"
        print(f"[abuse] {msg}", flush=True)
        return ["## Server abuse", "", msg + ".", ""]
    sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location("serve_abuse", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["serve_abuse"] = mod  # multiprocessing pickles its functions by module name
    spec.loader.exec_module(mod)
    print(f"[abuse] python benchmarks/serve_abuse.py {shlex.join(rest)}", flush=True)
    t0 = time.time()
    if inspect.signature(mod.main).parameters:
        rc = mod.main(list(rest))
    else:  # a main() that parses sys.argv itself
        saved = sys.argv
        sys.argv = [str(path), *rest]
        try:
            rc = mod.main()
        finally:
            sys.argv = saved
    out = Path(rest[rest.index("--out") + 1]) if "--out" in rest[:-1] else None
    out = out or getattr(mod, "RESULTS", None)
    lines = [
        "## Server abuse",
        "",
        f"`python benchmarks/serve_abuse.py {shlex.join(rest)}` (run from here) returned {rc!r};"
        f" its report ({out}):",
        "",
    ]
    if out is not None and Path(out).exists() and Path(out).stat().st_mtime >= t0:
        # its own headings one level down; its machine lines are the same as ours
        text = Path(out).read_text().split("\nMachine:")[0]
        lines += [("##" + ln) if ln.startswith("#") else ln for ln in text.splitlines()]
    else:
        lines.append("(no report written)")
    return [*lines, ""]


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--trials", type=int, default=1, help="trials per target / variant")
    common.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    common.add_argument("--out", type=Path, default=HERE / "results" / "faults.md")
    common.add_argument(
        "--work",
        type=Path,
        default=None,
        help="a new scratch dir is made in it (default: the system temp dir)",
    )
    common.add_argument("--keep", action="store_true", help="keep --work afterwards")
    common.add_argument(
        "--max-minutes", type=float, default=60.0, help="stop starting trials after"
    )
    kill = argparse.ArgumentParser(add_help=False)
    kill.add_argument("--targets", nargs="+", choices=TARGETS, default=TARGETS)
    kill.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial (at most)")
    kill.add_argument("--window", choices=["work", "full"], default="work")
    kill.add_argument("--flywheel-trials", type=int, default=0, help="0: --trials")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("kills", parents=[common, kill], help="SIGKILL and resume each target")
    sub.add_parser("writers", parents=[common], help="two data record --out D at once")
    sub.add_parser("abuse", help="benchmarks/serve_abuse.py main(argv): all flags are its own")
    al = sub.add_parser("all", parents=[common, kill], help="kills, writers and abuse")
    al.add_argument("--abuse-args", default="", help="arguments for serve_abuse.main, one string")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["abuse"]:
        abuse_section(argv[1:])  # every flag after `abuse` is serve_abuse's
        return 0
    args = parse(argv)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    # always a fresh directory of our own, so that cleaning up removes nothing else
    args.work = Path(tempfile.mkdtemp(prefix="anyskill-faults-", dir=args.work))
    env = child_env(args.work)
    clock = Clock(args.max_minutes)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [
        "# Fault benchmark: kills, concurrent writers, server abuse",
        "",
        f"Started {started}, {clock.elapsed() / 60:.0f} min; scratch dir {args.work}.",
        "",
    ]
    try:
        if args.cmd in ("kills", "all"):
            lines += kills_section(args.targets, args, clock, env)
        if args.cmd in ("writers", "all"):
            lines += writers_section(args, clock, env)
        if args.cmd == "all":
            try:
                lines += abuse_section(shlex.split(args.abuse_args))
            except Exception as e:  # noqa: BLE001 - keep the kills and writers figures
                lines += ["## Server abuse", "", f"serve_abuse.main raised {e!r}.", ""]
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    lines[2] = (
        f"Started {started}, took {clock.elapsed() / 60:.1f} min (--max-minutes"
        f" {args.max_minutes:g}); scratch dir {args.work}{' (kept)' if args.keep else ''}."
    )
    from common import write_report

    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
