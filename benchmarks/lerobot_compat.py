"""Check both directions of LeRobot v3.0 compatibility with LeRobot's own code.

1. anyskill writes a dataset (state, action, camera, experience fields, annotations);
   LeRobot's ``LeRobotDataset`` (run in a separate interpreter that has lerobot installed)
   loads it and its frames, video frames and padded action chunks are compared with what
   was written.
2. LeRobot's writer (``LeRobotDataset.create`` + ``add_frame`` + ``save_episode``) writes a
   small dataset (two episodes in one data file and one concatenated AV1 video); anyskill's
   ``Dataset`` opens and validates it and the values are compared.

lerobot pulls torch, so it lives in its own venv, never in anyskill's dependencies:

    python -m venv /tmp/lerobot-venv
    /tmp/lerobot-venv/bin/pip install torch==2.13.0 lerobot==0.4.4
    python benchmarks/lerobot_compat.py --lerobot-python /tmp/lerobot-venv/bin/python \\
        [--fixture-out tests/data/fixtures/lerobot_v30_tiny]

``--fixture-out`` copies the LeRobot-written dataset there (the test fixture). The result
goes to benchmarks/results/lerobot_compat.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from anyskill.data.format import vector_feature, video_feature
from anyskill.data.reader import Dataset
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter

LENGTHS = (7, 5, 9)
FPS = 10


def expected_state(e: int, t: int) -> np.ndarray:
    return np.array([e, t, e * 0.5 + t * 0.25], np.float32)


def expected_action(e: int, t: int) -> np.ndarray:
    return np.array([t * 0.1, -e], np.float32)


def expected_pixel(e: int, t: int) -> int:
    return 20 + 10 * t + 60 * e


def write_anyskill(root: Path) -> None:
    w = EpisodeWriter.create(
        root,
        {
            "observation.state": vector_feature(3, names=["a", "b", "c"]),
            "action": vector_feature(2),
            "observation.images.top": video_feature(32, 32, FPS),
        },
        fps=FPS,
        robot_type="anyskill-compat",
    )
    for e, n in enumerate(LENGTHS):
        for t in range(n):
            w.add_frame(
                {
                    "observation.state": expected_state(e, t),
                    "action": expected_action(e, t),
                    "observation.images.top": np.full((32, 32, 3), expected_pixel(e, t), np.uint8),
                },
                task=f"task {e % 2}",
                intervention=(t == 2),
            )
        w.end_episode(success=e != 1, source=("demonstration", "autonomous", "corrected")[e])
    ds = Dataset.open(root, mmap=False)
    ds.annotate_frames("advantage", np.linspace(-1, 1, ds.num_frames))
    ds.annotate_episodes("success", [1], episodes=[1])


LEROBOT_SIDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    src, out = sys.argv[1], sys.argv[2]
    lengths, fps = json.loads(sys.argv[3]), int(sys.argv[4])
    res = {"lerobot_version": __import__("lerobot").__version__}

    # 1. read the anyskill dataset
    ds = LeRobotDataset("anyskill/compat", root=src, video_backend="pyav")
    res["read_frames"] = len(ds)
    res["read_episodes"] = ds.num_episodes
    errs = []
    g = 0
    for e, n in enumerate(lengths):
        for t in range(n):
            x = ds[g]
            st = np.array([e, t, e * 0.5 + t * 0.25], np.float32)
            if not np.allclose(x["observation.state"].numpy(), st):
                errs.append(f"state {g}")
            if int(x["episode_index"]) != e or int(x["frame_index"]) != t:
                errs.append(f"index {g}")
            if x["task"] != f"task {e % 2}":
                errs.append(f"task {g}: {x['task']}")
            if bool(x["intervention"]) != (t == 2):
                errs.append(f"intervention {g}")
            px = float(x["observation.images.top"][:, 16, 16].mean()) * 255
            if abs(px - (20 + 10 * t + 60 * e)) > 4:
                errs.append(f"pixel {g}: {px}")
            g += 1
    chunk = LeRobotDataset(
        "anyskill/compat", root=src, video_backend="pyav",
        delta_timestamps={"action": [i / fps for i in range(4)]},
    )
    y = chunk[lengths[0] - 2]  # two frames before the end of episode 0
    res["chunk_pad"] = y["action_is_pad"].tolist()
    if res["chunk_pad"] != [False, False, True, True]:
        errs.append("action_is_pad")
    res["read_errors"] = errs

    # 2. write a dataset with LeRobot's writer
    feats = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "observation.images.top": {
            "dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]
        },
    }
    w = LeRobotDataset.create("lerobot/tiny", fps=fps, features=feats, root=out,
                              robot_type="lerobot-fixture", use_videos=True)
    for e, n in enumerate([4, 3]):
        for t in range(n):
            w.add_frame({
                "observation.state": np.array([e, t, e * 0.5 + t * 0.25], np.float32),
                "action": np.array([t * 0.1, -e], np.float32),
                "observation.images.top": np.full((32, 32, 3), 20 + 10 * t + 60 * e, np.uint8),
                "task": f"lerobot task {e}",
            })
        w.save_episode()
    if hasattr(w, "finalize"):
        w.finalize()
    res["written"] = out
    print("RESULT " + json.dumps(res))
    """
)


def check_lerobot_written(root: Path) -> list[str]:
    errs = []
    report = validate(root, deep=True)
    with tempfile.TemporaryDirectory() as cache:
        ds = Dataset.open(root, cache_dir=cache)
        g = 0
        for e, n in enumerate([4, 3]):
            if ds.tasks[int(ds.episodes.task_index[e])] != f"lerobot task {e}":
                errs.append(f"task of episode {e}")
            video = ds.episode_video(e, "observation.images.top")
            for t in range(n):
                if not np.allclose(ds.columns["observation.state"][g], expected_state(e, t)):
                    errs.append(f"state {g}")
                if not np.allclose(ds.columns["action"][g], expected_action(e, t)):
                    errs.append(f"action {g}")
                px = float(video[t, 8, 8].mean())
                if abs(px - expected_pixel(e, t)) > 4:
                    errs.append(f"pixel {g}: {px}")
                g += 1
        if report.warnings:
            errs.extend(report.warnings)
    return errs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lerobot-python", default="/tmp/lerobot-venv/bin/python")
    p.add_argument("--fixture-out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/lerobot_compat.md"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_anyskill(tmp / "anyskill_ds")
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp / "hf"))
        proc = subprocess.run(
            [
                args.lerobot_python,
                "-c",
                LEROBOT_SIDE,
                str(tmp / "anyskill_ds"),
                str(tmp / "lerobot_ds"),
                json.dumps(LENGTHS),
                str(FPS),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        res = json.loads(line[0][len("RESULT ") :])
        res["anyskill_read_errors"] = check_lerobot_written(tmp / "lerobot_ds")
        if args.fixture_out is not None:
            if args.fixture_out.exists():
                shutil.rmtree(args.fixture_out)
            shutil.copytree(tmp / "lerobot_ds", args.fixture_out)
    ok_a = not res["read_errors"] and res["read_frames"] == sum(LENGTHS)
    ok_b = not res["anyskill_read_errors"]
    res["anyskill_to_lerobot"] = "PASS" if ok_a else "FAIL"
    res["lerobot_to_anyskill"] = "PASS" if ok_b else "FAIL"
    print(json.dumps(res, indent=2))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        "# LeRobot v3.0 compatibility\n\n"
        f"`python benchmarks/lerobot_compat.py --lerobot-python {args.lerobot_python}` on "
        f"{platform.node()} ({platform.python_version()}), lerobot {res['lerobot_version']} "
        "(video_backend=pyav; torchcodec needs system FFmpeg libraries).\n\n"
        f"- anyskill → LeRobot (`LeRobotDataset(repo_id, root=PATH)` reads anyskill's files; "
        f"frames, tasks, intervention, decoded video pixels, `action_is_pad` of a 4-step chunk "
        f"at an episode end): **{res['anyskill_to_lerobot']}** "
        f"({res['read_frames']} frames, {res['read_episodes']} episodes, errors: "
        f"{res['read_errors'] or 'none'})\n"
        f"- LeRobot → anyskill (dataset written by `LeRobotDataset.create` + `add_frame` + "
        f"`save_episode`, AV1 video with two episodes in one file; `validate(deep=True)`, "
        f"values and decoded pixels): **{res['lerobot_to_anyskill']}** (errors: "
        f"{res['anyskill_read_errors'] or 'none'})\n"
    )
    return 0 if ok_a and ok_b else 1


if __name__ == "__main__":
    sys.exit(main())
