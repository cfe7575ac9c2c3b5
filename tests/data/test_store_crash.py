"""A writer killed with SIGKILL at random moments never leaves an unreadable dataset, never
loses an episode whose ``end_episode`` returned, and reopening continues where it stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from store_helpers import action_of, state_of

from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

HERE = Path(__file__).parent

CHILD = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[4])
from store_helpers import FEATURES, action_of, state_of
from anyskill.data.format import video_feature
from anyskill.data.writer import EpisodeWriter
from pathlib import Path

root, seed, images = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if (root / "meta" / "info.json").exists():
    w = EpisodeWriter.open(root)
else:
    feats = dict(FEATURES)
    if images:
        feats["observation.images.cam"] = video_feature(16, 16, 10)
    w = EpisodeWriter.create(root, feats, fps=10, data_files_size_in_mb=0.01)
print("READY", w.total_episodes, flush=True)
rng = np.random.default_rng(seed)
while True:
    e, n = w.total_episodes, int(rng.integers(1, 25))
    for t in range(n):
        frame = {"observation.state": state_of(e, t), "action": action_of(e, t)}
        if images:
            frame["observation.images.cam"] = np.full((16, 16, 3), 7 * t % 250, np.uint8)
        w.add_frame(frame, task=f"task {e % 4}", intervention=bool(t % 2))
    w.end_episode(success=bool(e % 2), source="autonomous")
    print("COMMITTED", e, n, flush=True)
"""


def _run_and_kill(root: Path, seed: int, images: bool, delay: float) -> tuple[int, dict[int, int]]:
    """Start a writer, SIGKILL it ``delay`` s after it is ready; return (episodes at start,
    {episode: length} of every end_episode that returned)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(seed), "1" if images else "0", str(HERE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first = proc.stdout.readline().split()
    assert first and first[0] == "READY", proc.stderr.read()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    committed = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "COMMITTED":
            committed[int(parts[1])] = int(parts[2])
    return int(first[1]), committed


def _check(root: Path, committed: dict[int, int]) -> None:
    ds = Dataset.open(root, mmap=False)  # must open: every file is whole and consistent
    validate(root)  # warnings (stale stats, leftover files) are allowed until reopen
    assert ds.num_episodes >= len(committed)
    for e, n in committed.items():
        assert ds.episodes.length[e] == n, (e, n)
        ep = ds.episode(e)
        np.testing.assert_array_equal(ep["observation.state"][n - 1], state_of(e, n - 1))
        np.testing.assert_array_equal(ep["action"][0], action_of(e, 0))
        assert ds.episodes.success[e] == e % 2


def _cycles(root: Path, seed: int, images: bool, cycles: int) -> int:
    rng = np.random.default_rng(seed)
    committed: dict[int, int] = {}
    kills = 0
    for c in range(cycles):
        start, new = _run_and_kill(root, seed * 100 + c, images, float(rng.uniform(0.0, 0.35)))
        kills += 1
        if (root / "meta" / "info.json").exists():
            # the writer resumed at the committed total, so nothing finished was rewritten
            assert start >= len(committed)
            committed.update(new)
            _check(root, committed)
    # a last reopen repairs everything: no warnings remain
    if (root / "meta" / "info.json").exists():
        EpisodeWriter.open(root).close()
        assert validate(root).warnings == ()
        _check(root, committed)
    return kills


def test_sigkill_at_random_points_never_loses_finished_episodes(tmp_path):
    plans = [
        (tmp_path / "a", 1, False, 10),
        (tmp_path / "b", 2, False, 10),
        (tmp_path / "c", 3, True, 5),
    ]
    with ThreadPoolExecutor(len(plans)) as pool:
        kills = sum(pool.map(lambda p: _cycles(*p), plans))
    assert kills == 25
    # the trials did commit data (not every kill before the first episode); loose, since a
    # loaded machine commits fewer episodes before each kill
    assert sum(Dataset.open(p[0], mmap=False).num_episodes for p in plans if p[0].exists()) >= 5


def test_recovery_trims_uncommitted_rows_and_files(tmp_path):
    """Simulate a commit that died after the data file was replaced but before info.json."""
    from store_helpers import write_dataset

    root = tmp_path / "ds"
    write_dataset(root, [4, 3])
    info_before = (root / "meta" / "info.json").read_bytes()
    w = EpisodeWriter.open(root)
    w.add_frame({"observation.state": state_of(2, 0), "action": action_of(2, 0)}, task="x")
    w.end_episode()
    w.close()  # the writer "died" (which releases its lock) ...
    (root / "meta" / "info.json").write_bytes(info_before)  # ... and rolls the commit back
    (root / "data" / "chunk-000" / ".file-000.parquet.abc.tmp").write_bytes(b"partial")
    ds = Dataset.open(root, mmap=False)  # readers ignore the uncommitted rows
    assert ds.num_episodes == 2 and ds.num_frames == 7
    w = EpisodeWriter.open(root)
    assert w.total_episodes == 2
    assert not list(root.rglob("*.tmp"))
    assert validate(root).warnings == ()
    assert Dataset.open(root).episodes.length.tolist() == [4, 3]
