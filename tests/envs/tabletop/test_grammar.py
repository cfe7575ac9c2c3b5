"""The instruction grammar (issue 27): deterministic texts, every word a token of its own in
the VLA's vocabulary, held-out constructions only in held-out rows."""

from __future__ import annotations

import re
import zlib

import jax
import numpy as np
import pytest

from anyskill.algos.vla.config import ModelConfig
from anyskill.envs import make
from anyskill.envs.tabletop import families as F
from anyskill.envs.tabletop import tasks as T
from anyskill.envs.tabletop.grammar import (
    GRAMMAR_BASE,
    MAX_WORDS,
    Construction,
    Grammar,
    lexicon,
)
from anyskill.nets.transformer import WORD_BUCKETS, tokenize, words

ALL = T.FAMILIES


@pytest.fixture(scope="module")
def texts() -> dict[str, list[tuple[tuple[int, ...], str]]]:
    """Every grammar row of every family with its instruction."""
    out = {}
    for name in ALL:
        family = F.get(name)
        out[name] = [(r, family.instruction(r)) for r in family.instruction_rows("grammar")]
    return out


def construction(row) -> Construction:
    return F.by_code(row[T.FAMILY]).grammar.construction(row[T.PHRASING] - GRAMMAR_BASE)


def test_the_text_is_a_pure_function_of_the_row():
    """Rendering a row twice gives the same text, and stored texts stay what they were: a
    few rows against the strings they rendered when the grammar was written (a change to
    the rules changes these, and with them every dataset recorded in grammar mode)."""
    push, sort = F.get("push"), F.get("sort")
    row = push.row(colour=0, shape=0, zone=2, phrasing=GRAMMAR_BASE + 3)
    assert push.instruction(row) == push.instruction(tuple(row))
    golden = {
        push.row(colour=0, shape=0, zone=2, phrasing=GRAMMAR_BASE + 0): (
            "your task is to move the red block to the blue area"
        ),
        push.row(colour=1, shape=2, zone=3, phrasing=GRAMMAR_BASE + 6): (
            "it is the yellow region that the green bar should end up in"
        ),
        sort.row(phrasing=GRAMMAR_BASE + 5): (
            "go ahead and slide each piece to the zone that has its colour now"
        ),
    }
    got = {r: T.instruction(np.array(r)) for r in golden}
    assert got == golden
    # distinct grammar ids of one task give many distinct texts (not one per construction)
    n_texts = len({push.instruction((*row[:-1], GRAMMAR_BASE + g)) for g in range(128)})
    assert n_texts > 60


def test_every_word_is_its_own_token_in_the_vla_vocabulary(texts):
    """The VLA hashes words into WORD_BUCKETS buckets (``nets.transformer.tokenize``): no
    two words the grammar (or a template, or a colour/shape name) can produce share a
    bucket — else the policy could not tell them apart — every produced word is in the
    grammars' lexicon, and every instruction fits the VLA's default text context."""
    vocab = set(T.COLOURS) | set(T.SHAPES)
    for name in ALL:
        family = F.get(name)
        vocab |= lexicon(family.grammar)
        vocab |= {w for t in family.templates for w in words(t)}
    buckets: dict[int, set[str]] = {}
    for w in vocab:
        buckets.setdefault(zlib.crc32(w.encode()) % WORD_BUCKETS, set()).add(w)
    shared = [sorted(ws) for ws in buckets.values() if len(ws) > 1]
    assert not shared, f"words sharing a token: {shared}"
    max_len = ModelConfig().max_text_len
    assert MAX_WORDS <= max_len
    for name, pairs in texts.items():
        produced = {w for _, t in pairs for w in words(t)}
        assert produced <= vocab, (name, produced - vocab)
        # the whole lexicon is reachable and produced somewhere (no dead rules)
        assert lexicon(F.get(name).grammar) <= produced, name
        tokens, mask = tokenize([t for _, t in pairs], max_len)  # raises if one is too long
        assert mask.sum(1).max() <= MAX_WORDS


def test_heldout_constructions_never_appear_in_training_rows(texts):
    """Train rows use only training constructions; no training text equals a held-out
    construction's text or has its syntax (relative clause, cleft, be-passive); and every
    word of the held-out constructions occurs in training texts (new structure, no
    untrained word embeddings)."""
    relative = re.compile(r"\bthat (is|has) (red|green|blue|yellow|its)\b")
    cleft = re.compile(r"^it is ")
    passive = re.compile(
        r"\b(should|has to|needs to|need to|must) be \w+ed\b|\bbe (put|slid|brought)\b"
    )
    for name, pairs in texts.items():
        family = F.get(name)
        train = [(r, t) for r, t in pairs if T.in_split(family, r, "train")]
        held = [(r, t) for r, t in pairs if construction(r).heldout]
        assert train and held
        assert not any(construction(r).heldout for r, _ in train), name
        train_texts = {t for _, t in train}
        assert train_texts.isdisjoint(t for _, t in held), name
        for _, t in train:
            assert not relative.search(t) and not cleft.search(t), t
            assert not passive.search(t), t
        # each held-out construction is recognisable by its syntax
        for r, t in held:
            kind = construction(r).name
            pattern = {"relative": relative, "cleft": cleft, "passive": passive}[kind]
            assert pattern.search(t), (kind, t)
        train_words = {w for t in train_texts for w in words(t)}
        held_words = {w for _, t in held for w in words(t)}
        assert held_words <= train_words, (name, held_words - train_words)


def test_the_text_determines_the_task(texts):
    """Every grammar and template text parses back to the content of the row it came from
    (no two tasks share an instruction); the phrasing does not matter."""
    for pairs in texts.values():
        for r, t in pairs[::7]:
            assert T.parse_instruction(t) == T.content(r), t
    for r in T.task_table(ALL, "all")[0]:
        assert T.parse_instruction(T.instruction(r)) == T.content(r)
    assert T.parse_instruction("dance the macarena") is None


def test_grammar_splits_partition_and_keep_the_heldout_combinations():
    """In grammar mode train/heldout partition all rows; heldout-language and
    heldout-combination are disjoint parts of heldout; every object x zone content of the
    templates appears in grammar mode with the same held-out combinations; templates stay
    the default and unchanged (805 rows)."""
    rows = {s: T.task_table(ALL, s, "grammar")[0] for s in T.SPLITS}
    sets = {s: {tuple(map(int, r)) for r in a} for s, a in rows.items()}
    assert sets["train"].isdisjoint(sets["heldout"])
    assert sets["train"] | sets["heldout"] == sets["all"]
    assert sets["heldout-language"] | sets["heldout-combination"] <= sets["heldout"]
    assert sets["heldout-language"].isdisjoint(sets["heldout-combination"])
    assert (rows["all"][:, T.PHRASING] >= GRAMMAR_BASE).all()
    templ = T.task_table(ALL, "all")[0]
    assert {T.content(r) for r in templ} == {T.content(r) for r in rows["all"]}
    held_combo = {T.content(r) for r in T.task_table(ALL, "heldout-combination")[0]}
    assert held_combo == {T.content(r) for r in rows["heldout-combination"]}
    assert held_combo and not held_combo & {T.content(r) for r in rows["train"]}
    np.testing.assert_array_equal(
        T.task_table(ALL, "all")[0], T.task_table(ALL, "all", "templates")[0]
    )
    assert len(templ) == 805 and (templ[:, T.PHRASING] < 5).all()


def test_an_env_in_grammar_mode_draws_grammar_rows_of_its_split():
    """``make(..., instructions="grammar")`` draws grammar rows of its split and states
    render their grammar text; held-out constructions show up only in held-out envs."""
    for split in ("train", "heldout-language"):
        env = make("tabletop-push", instructions="grammar", split=split)
        states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(3), 64))
        tasks = np.asarray(states.physics.task)
        assert (tasks[:, T.PHRASING] >= GRAMMAR_BASE).all()
        assert all(T.in_split(F.get("push"), tuple(map(int, r)), split) for r in tasks)
        heldout = [construction(tuple(map(int, r))).heldout for r in tasks]
        assert all(heldout) if split != "train" else not any(heldout)
        assert len(set(env.instruction(states))) > 40
    with pytest.raises(ValueError, match="unknown instruction source 'grammer'.*'grammar'"):
        make("tabletop-push", instructions="grammer")


def test_bad_grammars_are_refused_with_the_rule_named():
    """An undefined rule, an unknown slot, or a grammar without a held-out construction is
    an error naming it; a family without a grammar refuses grammar mode."""
    with pytest.raises(ValueError, match=r"undefined rules \['nope'\]"):
        Grammar((Construction("a", "go <nope>"), Construction("b", "go", heldout=True)))
    with pytest.raises(ValueError, match=r"unknown slots \['colour3'\]"):
        Grammar((Construction("a", "go {colour3}"), Construction("b", "go", heldout=True)))
    with pytest.raises(ValueError, match="needs training and held-out constructions"):
        Grammar((Construction("a", "go"),))
    import dataclasses

    bare = dataclasses.replace(F.get("reach"), grammar=None)
    with pytest.raises(ValueError, match="has no instruction grammar"):
        bare.instruction_rows("grammar")
