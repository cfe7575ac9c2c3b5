"""Subtask annotations of an episode store (issue 27): written beside the frames (never
into them), read back per frame, checked against the frames, optional for training."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from store_helpers import write_dataset

from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.data import TrainingData, model_for_dataset
from anyskill.cli import main
from anyskill.data.format import SUBTASKS_PATH, SchemaMismatchError, vector_feature
from anyskill.data.reader import Dataset
from anyskill.data.subtasks import (
    NO_SUBTASK,
    UNLABELLED,
    annotate_subtasks,
    read_subtasks,
    write_subtasks,
)
from anyskill.data.validate import validate
from anyskill.data.writer import EpisodeWriter
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.grammar import GRAMMAR_BASE
from anyskill.envs.tabletop.subtasks import label_episode, observation

C = 0.72
ZONES = np.array([[-C, -C], [-C, C], [C, -C], [C, C]], np.float32)
RED, GREEN = 0, 1


def line(a, b, n):
    return np.linspace(a, b, n).astype(np.float32)


def sort_episode(first_red: bool) -> np.ndarray:
    """``[20, 40]``: two objects pushed home one after the other (red first or green)."""
    a = np.concatenate([line((0.0, -0.1), (-0.6, -0.6), 10), np.repeat([[-0.6, -0.6]], 10, 0)])
    b = np.concatenate([np.repeat([[0.1, 0.1]], 10, 0), line((0.1, 0.1), (-0.5, 0.5), 10)])
    red, green = (a, b) if first_red else (b[:, ::-1] * [1, -1], a[:, ::-1] * [1, -1])
    return observation(np.zeros((20, 2)), np.stack([red, green], 1), [RED, GREEN], [0, 1], ZONES)


EPISODES = [
    # (instruction row, frames)
    (F.get("sort").row(phrasing=0), sort_episode(True)),
    (F.get("sort").row(phrasing=GRAMMAR_BASE + 9), sort_episode(False)),
    (F.get("push").row(colour=GREEN, shape=1, zone=3, phrasing=2), sort_episode(True)[:7]),
]


def write_tabletop(root, episodes=EPISODES) -> EpisodeWriter:
    features = {"observation.state": vector_feature(40), "action": vector_feature(2)}
    w = EpisodeWriter.create(root, features, fps=10)
    append(w, episodes)
    return w


def append(w: EpisodeWriter, episodes) -> None:
    for row, obs in episodes:
        actions = np.zeros((len(obs), 2), np.float32)
        w.add_episode(
            {"observation.state": obs, "action": actions}, task=T.instruction(row), success=True
        )


def digests(root) -> dict[str, str]:
    """Content hash of every file of the dataset except the subtask sidecar."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / SUBTASKS_PATH
    }


def test_annotation_round_trip_leaves_the_frames_untouched(tmp_path):
    """annotate -> read: every frame's subtask text is what label_episode says for its
    episode (template and grammar instructions alike); no other file changes; validate
    passes and checks the sidecar."""
    root = tmp_path / "ds"
    write_tabletop(root).close()
    before = digests(root)
    summary = annotate_subtasks(root)
    assert digests(root) == before
    assert (summary.episodes, summary.frames, summary.subtasks) == (3, 47, 3)
    assert summary.per_episode == pytest.approx(5 / 3)
    ds = Dataset.open(root)
    ann = read_subtasks(ds)
    assert ann.labelled.all() and ann.labeller == "anyskill.envs.tabletop.subtasks"
    for e, (row, obs) in enumerate(EPISODES):
        want = label_episode(obs, row)
        s = int(ds.episodes.start[e])
        got = [ann.text(s + t) for t in range(len(obs))]
        assert got == [want.text_at(t) for t in range(len(obs))]
    assert ann.text(0) == "push the red block into the red zone"
    assert ann.text(20) == "push the green disc into the green zone"  # episode 1: green first
    # the structured form renders to the text
    assert [T.instruction(r) for r in ann.rows] == list(ann.texts)
    assert validate(root).frames == 47
    # annotating again replaces the labels with the same ones
    annotate_subtasks(root)
    np.testing.assert_array_equal(read_subtasks(Dataset.open(root)).index, ann.index)


def test_a_dataset_without_annotations_still_loads_and_trains(tmp_path):
    """No sidecar: read_subtasks is None and a training batch is drawn as before; with the
    sidecar the same batch comes out (training does not depend on it)."""
    root = tmp_path / "ds"
    write_tabletop(root).close()
    ds = Dataset.open(root)
    assert read_subtasks(ds) is None
    model = model_for_dataset(ModelConfig(arch="mlp-bc", horizon=4), ds)

    def first_batch():
        data = TrainingData.build(Dataset.open(root), model, batch_size=8, seed=0)
        return data.batch()

    plain = first_batch()
    annotate_subtasks(root)
    labelled = first_batch()
    np.testing.assert_array_equal(plain.actions, labelled.actions)


def test_episodes_appended_later_read_as_unlabelled(tmp_path):
    root = tmp_path / "ds"
    write_tabletop(root).close()
    annotate_subtasks(root)
    with EpisodeWriter.open(root) as w:
        append(w, EPISODES[:1])
    ds = Dataset.open(root)
    ann = read_subtasks(ds)
    assert ann.labelled[:47].all() and (ann.index[47:] == UNLABELLED).all()
    assert ann.text(50) is None


def test_labels_of_other_frames_are_refused(tmp_path):
    """A sidecar whose frames are not the dataset's (copied from another dataset, or the
    dataset rewritten) is an error naming the file and the frame."""
    write_tabletop(tmp_path / "a").close()
    write_tabletop(tmp_path / "b", EPISODES[1:] + EPISODES[:1]).close()
    annotate_subtasks(tmp_path / "a")
    (tmp_path / "b" / SUBTASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "b" / SUBTASKS_PATH).write_bytes((tmp_path / "a" / SUBTASKS_PATH).read_bytes())
    with pytest.raises(
        SchemaMismatchError, match=r"subtasks.parquet: frame 27: episode_index 1 in the labels, 2"
    ):
        read_subtasks(Dataset.open(tmp_path / "b"))


def test_write_checks_and_a_failed_write_keeps_the_old_labels(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_tabletop(root).close()
    ds = Dataset.open(root)
    with pytest.raises(ValueError, match="frame 1 has subtask index 5"):
        write_subtasks(ds, [0, 5], ["a"])
    with pytest.raises(ValueError, match="48 labels for a dataset of 47 frames"):
        write_subtasks(ds, np.zeros(48), ["a"])
    write_subtasks(ds, [0, NO_SUBTASK], ["a"])
    old = (root / SUBTASKS_PATH).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk on fire"):
        write_subtasks(ds, [0, 0, 0], ["b"])
    assert (root / SUBTASKS_PATH).read_bytes() == old
    assert [p.name for p in (root / SUBTASKS_PATH).parent.iterdir()] == ["subtasks.parquet"]
    monkeypatch.undo()
    ann = read_subtasks(ds)
    assert ann.text(0) == "a" and ann.text(1) == "" and ann.text(2) is None


def test_what_cannot_be_labelled_is_refused(tmp_path):
    """A dataset that is not a tabletop recording, or an episode whose instruction no
    tabletop task has, gets one clear error."""
    write_dataset(tmp_path / "other", [3, 2]).close()
    with pytest.raises(SchemaMismatchError, match="not a tabletop state"):
        annotate_subtasks(tmp_path / "other")
    features = {"observation.state": vector_feature(40), "action": vector_feature(2)}
    with EpisodeWriter.create(tmp_path / "odd", features, fps=10) as w:
        obs = EPISODES[0][1]
        w.add_episode({"observation.state": obs, "action": np.zeros((20, 2))}, task="dance")
    with pytest.raises(ValueError, match="episode 0's instruction 'dance' is no tabletop task"):
        annotate_subtasks(tmp_path / "odd")
    assert not (tmp_path / "odd" / SUBTASKS_PATH).exists()


def test_cli_annotate_subtasks(tmp_path, capsys):
    root = tmp_path / "ds"
    write_tabletop(root).close()
    assert main(["data", "annotate-subtasks", str(root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 3 and out["subtasks"] == 3
    assert read_subtasks(Dataset.open(root)).labelled.all()
