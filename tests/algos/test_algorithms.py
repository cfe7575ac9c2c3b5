"""The algorithm registry (anyskill.algos) and ``anyskill train NAME`` built from it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from anyskill import algos
from anyskill.algos import ALGORITHMS, Algorithm, get_algorithm
from anyskill.cli import main


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A toy algorithm's settings."""

    n: int = 1
    """How many."""


def toy_train(cfg: ToyConfig) -> dict:
    return {"doubled": 2 * cfg.n}


TOY = Algorithm("toy", "a toy", config=f"{__name__}:ToyConfig", train=f"{__name__}:toy_train")


def test_every_algorithm_names_a_config_dataclass_and_a_train_entry():
    assert {"crl", "vla", "recap"} <= set(ALGORITHMS)
    for algo in ALGORITHMS.values():
        assert dataclasses.is_dataclass(algo.config_class), algo.name
        assert callable(algo.train_fn), algo.name


def test_lookup_by_name_or_alias_and_did_you_mean():
    assert get_algorithm("policy") is get_algorithm("vla")
    with pytest.raises(ValueError, match=r"unknown algorithm 'recpa'. Did you mean 'recap'"):
        get_algorithm("recpa")


def test_register_refuses_a_taken_name_and_a_bad_reference(monkeypatch):
    monkeypatch.setattr(algos, "ALGORITHMS", dict(ALGORITHMS))
    with pytest.raises(ValueError, match=r"\['policy'\] already registered"):
        algos.register(Algorithm("bc", "x", TOY.config, TOY.train, aliases=("policy",)))
    with pytest.raises(ValueError, match="train must be 'module:attribute', got 'toy_train'"):
        Algorithm("toy", "x", TOY.config, "toy_train")


def test_train_lists_and_runs_every_registered_algorithm(monkeypatch, capsys):
    monkeypatch.setitem(ALGORITHMS, "toy", TOY)
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for algo in ALGORITHMS.values():
        assert algo.summary in text and "{crl,vla,policy,recap,toy}" in text
    # an algorithm without a command of its own: its config from the flags, train, result
    assert main(["train", "toy", "--n", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == {"doubled": 6}
    assert main(["train", "toy", "--n", "x"]) == 2
    assert "anyskill train toy" in capsys.readouterr().err
    assert main(["train", "tyo"]) == 2
    assert "Did you mean 'toy'" in capsys.readouterr().err
