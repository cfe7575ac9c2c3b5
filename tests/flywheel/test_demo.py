"""The README's main job end to end, shrunk: `anyskill demo` with its own settings (AWR beside
RECAP collecting rounds 2 on, the same evaluation episodes every round, the label diagnostic in
the report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anyskill.cli import DEMO_SETTINGS, main
from anyskill.data.reader import Dataset


@pytest.mark.slow  # two tiny flywheel rounds with four methods and the diagnostic (~90 s)
def test_the_demo_runs_its_loop_and_explains_it(tmp_path, capsys):
    run = tmp_path / "demo"
    small = [
        "--rounds", "2", "--demos", "16", "--init-steps", "30", "--episodes-per-round", "16",
        "--policy-steps", "10", "--eval-episodes", "16", "--batch-size", "16",
        "--value.steps", "10", "--value.finetune-steps", "5", "--value.batch-size", "16",
        "--model.arch", "mlp-flow", "--model.mlp-width", "32", "--model.depth", "2",
        "--model.width", "16", "--model.horizon", "5", "--no-videos", "--no-progress",
    ]  # fmt: skip
    assert main(["demo", "--run-dir", str(run), *small]) == 0
    cfg = json.loads((run / "config.json").read_text())
    for k, v in DEMO_SETTINGS.items():
        assert cfg[k] == (16 if k in ("eval_episodes", "demos") else v), k  # flags override

    rows = json.loads((run / "results.json").read_text())["rows"]
    got = {(r["round"], r["method"]) for r in rows}
    assert {(0, "start"), (1, "awr"), (2, "awr"), (2, "recap"), (2, "filtered")} <= got
    assert all("median_time_to_success_s" in r for r in rows if "success" in r)
    # round 2 was collected by AWR's policy of round 1
    versions = set(Dataset.open(run / "data").episodes.policy_version)
    assert {"recap-r0", "awr-r1"} <= versions
    report = (run / "report.md").read_text()
    assert "## What the labels carry" in report and "| 2 |" in report
    assert (run / "diagnosis-r1.json").exists() and (run / "diagnosis-r2.json").exists()
    assert "| 2 | AWR round 1 |" in report

    # the same 16 evaluation episodes every round: the starting policy scored again on
    # round 2's episodes gives its round-0 row
    from anyskill.flywheel.context import RunContext
    from anyskill.flywheel.loop import saved_config
    from anyskill.flywheel.phases import evaluation_episodes

    ctx = RunContext.open(saved_config(run))
    key, purpose = evaluation_episodes(ctx.cfg, 2)
    policy = ctx.deployment.policy(ctx.start_params, recap=False)
    ep = ctx.deployment.evaluate(policy, key, 16, purpose)
    start = next(r for r in rows if r["method"] == "start")
    assert np.mean(ep.success) == pytest.approx(start["success"])
