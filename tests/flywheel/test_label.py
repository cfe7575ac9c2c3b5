"""`anyskill label`: answers are saved one by one, bad answers re-asked, quitting keeps them."""

from __future__ import annotations

import io

import numpy as np

from anyskill.data.format import vector_feature, video_feature
from anyskill.data.reader import Dataset
from anyskill.data.writer import EpisodeWriter
from anyskill.flywheel.label import LabelConfig, label_episodes


def unlabelled(root, n=3, images=False):
    feats = {"observation.state": vector_feature(2), "action": vector_feature(2)}
    if images:
        feats["observation.images.cam"] = video_feature(16, 16, 10)
    w = EpisodeWriter.create(root, feats, fps=10)
    for e in range(n):
        for t in range(4):
            f = {"observation.state": np.full(2, t, np.float32), "action": np.zeros(2, np.float32)}
            if images:
                f["observation.images.cam"] = np.full((16, 16, 3), 30 * e + t, np.uint8)
            w.add_frame(f, task="push the red block")
        w.end_episode(success=None, source="autonomous")
    return root


def test_answers_saved_and_bad_answer_reasked(tmp_path):
    root = unlabelled(tmp_path / "d", images=True)
    out = io.StringIO()
    res = label_episodes(LabelConfig(root), io.StringIO("x\ny\nn\ns\n"), out)
    assert res == {"labelled": 2, "skipped": 1, "remaining": 0}
    assert "please answer" in out.getvalue()
    assert (root / "labels" / "episode_000000.gif").exists()
    np.testing.assert_array_equal(Dataset.open(root).episodes.success, [1, 0, -1])


def test_quitting_keeps_earlier_answers(tmp_path):
    root = unlabelled(tmp_path / "d")
    res = label_episodes(LabelConfig(root), io.StringIO("n\nq\n"), io.StringIO())
    assert res["labelled"] == 1 and res["remaining"] == 2
    np.testing.assert_array_equal(Dataset.open(root).episodes.success, [0, -1, -1])
    # a second session only shows what is still unlabelled
    out = io.StringIO()
    label_episodes(LabelConfig(root), io.StringIO("y\ny\n"), out)
    assert "2 episode(s) to label" in out.getvalue()
    np.testing.assert_array_equal(Dataset.open(root).episodes.success, [0, 1, 1])
