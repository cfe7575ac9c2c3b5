"""Policy run directories (``anyskill train policy``): resume without --data, a kill between
the metrics row and the checkpoint loses nothing, the time budget spans resumes, strict
config.json, nonsense settings refused (issue 22). A tiny MLP on 8 recorded episodes: each
training here takes seconds."""

from __future__ import annotations

import dataclasses
import json

import pytest

from anyskill import checkpoint
from anyskill.algos.vla import train as train_mod
from anyskill.algos.vla.config import ModelConfig, TrainConfig

TINY = ModelConfig(arch="mlp-bc", horizon=4, num_steps=2, width=16, depth=1, mlp_width=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from anyskill.data.record import record_expert

    path = tmp_path_factory.mktemp("vla-data") / "reach"
    record_expert(path, "tabletop-reach", episodes=8, images=False, seed=1, batch=8)
    return path


def tiny_cfg(data, run_dir, **kw) -> TrainConfig:
    base = dict(
        data=(data,),
        model=TINY,
        run_dir=run_dir,
        steps=8,
        batch_size=8,
        warmup_steps=1,
        eval_every=2,
        eval_episodes=0,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def quiet(*_):
    pass


def steps_in_metrics(run_dir) -> list[int]:
    return [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_resume_takes_data_from_the_saved_config(data, tmp_path, capsys):
    from anyskill.cli import main

    run = tmp_path / "run"
    train_mod.train(tiny_cfg(data, run, steps=2), log=quiet)
    assert main(["train", "policy", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out  # progress lines, then the result as JSON
    assert json.loads(out[out.index("{\n") :])["step"] == 2
    other = tmp_path / "other"
    code = main(["train", "policy", "--run-dir", str(run), "--resume", "--data", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and str(other) in err and str(data) in err and "--data" in err


class Killed(KeyboardInterrupt):
    pass


def kill_at_checkpoint(monkeypatch, step: int, before: bool = False) -> None:
    """``checkpoint.save`` raises :class:`Killed` at ``step``, just before or just after the
    checkpoint is written (as a SIGKILL there would stop the run)."""
    real = checkpoint.save

    def save(path, tree, meta):
        if meta["step"] == step and before:
            raise Killed
        real(path, tree, meta)
        if meta["step"] == step:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_around_the_checkpoint_loses_no_metrics_row(data, tmp_path, monkeypatch, when):
    """Killed just before or just after the checkpoint of step 6 is written (and a torn line
    left at the end of metrics.jsonl, as by a kill mid-append): the resumed run has every
    evaluation's row exactly once."""
    run = tmp_path / "run"
    kill_at_checkpoint(monkeypatch, 6, before=when == "before")
    with pytest.raises(Killed):
        train_mod.train(tiny_cfg(data, run), log=quiet)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')
    monkeypatch.undo()
    out = train_mod.train(tiny_cfg(data, run, resume=True), log=quiet)
    assert out["step"] == 8
    assert steps_in_metrics(run) == [2, 4, 6, 8]


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(data, tmp_path, monkeypatch):
    """The batch stream is checkpointed with the weights: killed after the checkpoint of step
    4 and resumed, the run draws the batches the uninterrupted run drew (it used to reseed
    its sampler, so the weights differed)."""
    import jax
    import numpy as np

    train_mod.train(tiny_cfg(data, tmp_path / "whole"), log=quiet)
    run = tmp_path / "run"
    kill_at_checkpoint(monkeypatch, 4)
    with pytest.raises(Killed):
        train_mod.train(tiny_cfg(data, run), log=quiet)
    monkeypatch.undo()
    train_mod.train(tiny_cfg(data, run, resume=True), log=quiet)
    whole = train_mod.load_run(tmp_path / "whole")[3]
    resumed = train_mod.load_run(run)[3]
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class FakeTime:
    """A clock that only moves when a training step runs (10 s each)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    time = monotonic = perf_counter


def test_time_budget_continues_across_a_resume_and_skips_the_compiled_step(
    data, tmp_path, monkeypatch
):
    clock = FakeTime()
    monkeypatch.setattr(train_mod, "time", clock)
    real_make = train_mod.make_train_step

    def make_train_step(*a, **kw):
        step = real_make(*a, **kw)

        def timed(ts, batch):
            clock.now += 10.0
            return step(ts, batch)

        return timed

    monkeypatch.setattr(train_mod, "make_train_step", make_train_step)
    real_save = checkpoint.save

    def save(path, tree, meta):
        if meta["step"] == 6:
            raise Killed
        real_save(path, tree, meta)

    monkeypatch.setattr(checkpoint, "save", save)
    run = tmp_path / "run"
    cfg = tiny_cfg(data, run, steps=100, time_budget_min=1.0)  # 60 s = 6 counted steps
    with pytest.raises(Killed):
        train_mod.train(cfg, log=quiet)
    # steps 2..4 counted (the first, compiling step is not): 30 s saved with step 4
    assert checkpoint.load_meta(run / train_mod.CKPT)["train_seconds"] == pytest.approx(30.0)
    monkeypatch.setattr(checkpoint, "save", real_save)
    out = train_mod.train(dataclasses.replace(cfg, resume=True), log=quiet)
    # resumed: step 5 compiles (not counted), 6..9 add 40 s: 70 s > 60 s stops at step 9
    assert out["step"] == 9
    assert checkpoint.load_meta(run / train_mod.CKPT)["train_seconds"] == pytest.approx(70.0)
    assert steps_in_metrics(run) == [2, 4, 6, 8, 9]


def _fake_policy_run(run_dir, fields: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(fields))
    (run_dir / train_mod.CKPT).write_bytes(b"not read: the config is refused first")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(stepz=3), r"unknown field 'stepz'.*'steps'"),
        (lambda d: d.update(steps="3000"), r"field 'steps' must be an integer, got '3000'"),
        (
            lambda d: d["model"].update(width=1.5),
            r"field 'model.width' must be an integer, got 1.5",
        ),
        (lambda d: d["model"].pop("depth"), r"field 'model.depth' is missing"),
        (lambda d: d.update(eval_split="train"), r"field 'eval_split' must be a list"),
    ],
)
def test_eval_policy_refuses_a_bad_config_in_one_line(tmp_path, capsys, change, match):
    from anyskill.cli import main

    fields = train_mod._config_to_json(TrainConfig(data=(tmp_path / "d",), model=TINY))
    change(fields)
    _fake_policy_run(tmp_path / "run", fields)
    assert main(["eval", "policy", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(tmp_path / "run" / "config.json") in err
    import re

    assert re.search(match, err), err


def test_a_config_that_is_not_json_names_the_file_line_and_column(tmp_path, capsys):
    from anyskill.cli import main

    run = tmp_path / "run"
    _fake_policy_run(run, {})
    (run / "config.json").write_text('{\n  "steps": 3,\n  "lr": ,\n}')
    assert main(["eval", "policy", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.json'}: not valid JSON" in err and "line 3 column 9" in err


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=0), "steps must be >= 1, got 0"),
        (dict(lr=-1e-3), "lr must be >= 0, got -0.001"),
        (dict(eval_episodes=-1), "eval_episodes must be >= 0"),
        (dict(batch_size=0), "batch_size must be >= 1, got 0"),
        (dict(time_budget_min=-1.0), "time_budget_min must be >= 0"),
    ],
)
def test_train_config_refuses_nonsense(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_eval_policy_refuses_zero_episodes(tmp_path, capsys):
    from anyskill.cli import main

    assert main(["eval", "policy", str(tmp_path), "--episodes", "0"]) == 2
    assert "--episodes must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow  # ~20 s: two training runs
def test_the_entity_layout_declared_by_the_data_or_by_its_env_trains_the_same_run(data, tmp_path):
    """A tabletop recording declares its entity tokens in meta/info.json; a recording made
    before that (no declaration) gets them from its env (source.json). Both give the same
    model, so the same weights, bit for bit (issue 23: the tabletop path is unchanged)."""
    import shutil

    import jax
    import numpy as np

    from anyskill.data.state_layout import STATE_TOKENS

    old = tmp_path / "old"
    shutil.copytree(data, old)
    info = old / "meta" / "info.json"
    raw = json.loads(info.read_text())
    del raw["features"]["observation.state"]["info"][STATE_TOKENS]
    info.write_text(json.dumps(raw))
    vla = ModelConfig(
        arch="vla", horizon=4, num_steps=2, width=16, depth=1, head_dim=8, action_width=16
    )
    runs = {}
    for name, path in (("declared", data), ("env", old)):
        cfg = tiny_cfg(path, tmp_path / name, model=vla, steps=3, eval_every=0)
        train_mod.train(cfg, log=quiet)
        runs[name] = train_mod.load_run(tmp_path / name)
    assert runs["declared"][0].model.state_tokens  # the entity tokens are in use
    assert runs["declared"][0].model == runs["env"][0].model
    for a, b in zip(*(jax.tree.leaves(r[3]) for r in runs.values()), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
