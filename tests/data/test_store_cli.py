"""`anyskill data ...` end to end on small datasets."""

from __future__ import annotations

import json

import pytest
from store_helpers import write_dataset

from anyskill.cli import main
from anyskill.data.reader import Dataset


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_info_validate_stats(tmp_path, capsys):
    write_dataset(tmp_path / "ds", [3, 4, 2, 5])
    assert main(["data", "info", str(tmp_path / "ds")]) == 0
    info = _json(capsys)
    assert info["episodes"] == 4 and info["frames"] == 14 and info["tasks"] == 3
    assert info["by_source"]["demonstration"]["episodes"] == 2
    assert info["by_source"]["demonstration"]["success_rate"] == 0.5  # episodes 0 (won), 3 (lost)
    assert main(["data", "validate", str(tmp_path / "ds")]) == 0
    assert _json(capsys)["warnings"] == []
    assert main(["data", "stats", str(tmp_path / "ds"), "--write"]) == 0
    assert set(_json(capsys)["action"]) >= {"mean", "std", "min", "max", "q01", "q99"}


def test_validate_names_broken_file_and_exits_2(tmp_path, capsys):
    write_dataset(tmp_path / "ds", [3])
    p = tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet"
    p.write_bytes(p.read_bytes()[:100])
    assert main(["data", "validate", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "data/chunk-000/file-000.parquet" in err and "truncated or corrupt" in err


def test_merge_split_render(tmp_path, capsys):
    write_dataset(tmp_path / "a", [3, 4], images=True)
    write_dataset(tmp_path / "b", [2], images=True)
    Dataset.open(tmp_path / "a").annotate_frames("advantage", range(7))
    assert (
        main(
            [
                "data",
                "merge",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    m = Dataset.open(tmp_path / "m")
    assert m.num_episodes == 3 and m.num_frames == 9
    assert m.frame_annotation("advantage")[:7].tolist() == list(range(7))
    assert main(["data", "merge", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 2
    capsys.readouterr()
    assert (
        main(
            [
                "data",
                "split",
                str(tmp_path / "m"),
                "--out",
                str(tmp_path / "s"),
                "--val-episodes",
                "1",
            ]
        )
        == 0
    )
    assert _json(capsys) == {"train": 2, "val": 1, "out": str(tmp_path / "s")}
    assert Dataset.open(tmp_path / "s" / "val").num_frames == 4
    out = tmp_path / "e.gif"
    assert (
        main(["data", "render", str(tmp_path / "m"), "--episodes", "0", "2", "--out", str(out)])
        == 0
    )
    assert out.stat().st_size > 0


def test_render_without_camera_or_env_is_a_clear_error(tmp_path, capsys):
    write_dataset(tmp_path / "ds", [3])
    assert main(["data", "render", str(tmp_path / "ds"), "--out", str(tmp_path / "x.gif")]) == 2
    assert "nothing to draw it from" in capsys.readouterr().err


def test_unknown_subcommand(capsys):
    assert main(["data", "infos", "x"]) == 2
    assert "Did you mean 'info'" in capsys.readouterr().err


@pytest.mark.slow
def test_record_tabletop_expert_and_render_from_state(tmp_path, capsys):
    out = tmp_path / "rec"
    assert (
        main(["data", "record", "--env", "tabletop-push", "--episodes", "3", "--out", str(out)])
        == 0
    )
    rec = json.loads(capsys.readouterr().out)
    assert rec["episodes"] == 3
    ds = Dataset.open(out)
    assert ds.summary()["by_source"]["demonstration"]["episodes"] == 3
    assert ds.columns["observation.state"].shape[1] > 0
    assert (
        main(["data", "render", str(out), "--episodes", "0", "1", "--out", str(tmp_path / "r.gif")])
        == 0
    )
