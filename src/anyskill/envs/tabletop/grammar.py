"""A small generative instruction grammar for the tabletop families (issue 27): word orders,
fillers, synonyms, polite and indirect forms, relative clauses — instead of five fixed
templates, so a policy cannot lean on surface regularities (which entity is named first).

A family's :class:`Grammar` is a list of *constructions* (the top-level sentence frames:
imperative, purpose clause, fronted goal, passive, cleft, ...) over a set of rewrite *rules*
(``<name>`` -> alternatives). An alternative is a string of words, ``{slot}`` placeholders
(filled from the task row: ``{colour}``, ``{shape}``, ``{zone}``, ``{colour2}``, ``{shape2}``)
and ``<name>`` references to other rules. A construction may override rules (a relative
clause construction replaces ``<obj>`` by "the {shape} that is {colour}").

**Rows stay the contract.** A grammar instruction is a task row whose phrasing column is
``GRAMMAR_BASE + g``: ``g`` is the *grammar id*, construction ``g % len(constructions)`` and
variant ``g // len(constructions)`` (``Grammar.variants`` per construction). Every choice inside the
expansion is a CRC-32 hash of the whole row and the choice's position, so the text is a pure
function of the row: env states and datasets that store rows (or texts) stay reproducible,
and ``tasks.instruction(row)`` needs no mode. Template rows (phrasing below ``GRAMMAR_BASE``)
are untouched.

**Held-out constructions.** Constructions marked ``heldout`` (per family: relative clauses,
clefts, passives) appear only in ``split="heldout"`` rows. Their *words* all occur in training
constructions (a test checks it): the held-out split tests new structure, not untrained word
embeddings. Colour and shape words are never replaced by synonyms: the VLA grounds objects by
those exact words (``algos.vla.model.grounded_vocab``).

Instructions are at most ``MAX_WORDS`` words (the VLA's default text context): an expansion
that comes out longer is redrawn with the next salt, deterministically.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Mapping

#: phrasing values >= this are grammar ids (template phrasings are 0..len(templates)-1)
GRAMMAR_BASE = 1000
#: surface variants (grammar ids) per construction, unless a grammar says otherwise
VARIANTS = 16
#: longest instruction the grammar produces (``ModelConfig.max_text_len`` defaults to 16)
MAX_WORDS = 16
#: redraws of an expansion longer than MAX_WORDS before giving up
_SALTS = 64

_REF = re.compile(r"<([a-z_0-9]+)>")
_SLOT = re.compile(r"{(\w*)}")
#: a word as ``anyskill.nets.transformer.words`` splits text ("colour's" is two)
_WORD = re.compile(r"[a-z0-9]+")

#: rules every family's grammar may use (a family's own rules override them)
COMMON_RULES: dict[str, tuple[str, ...]] = {
    # polite, indirect and filler openings (each followed by a bare verb)
    "pre": (
        "",
        "",
        "",
        "please",
        "now",
        "could you",
        "can you",
        "would you please",
        "go ahead and",
        "i need you to",
        "your task is to",
    ),
    "post": ("", "", "", "now", "for me", "thanks"),
    "zone_n": ("zone", "area", "square", "region", "corner"),
    "zone_np": ("the {zone} <zone_n>",),
    "i_want": ("i want", "i would like", "i need"),
    "must_be": ("should be", "has to be", "needs to be", "must be"),
}


@dataclasses.dataclass(frozen=True)
class Construction:
    """One sentence frame of a family's grammar."""

    name: str
    """Short name (``imperative``, ``passive``, ...), unique in its grammar."""
    pattern: str
    """The top-level expansion: words, ``{slots}`` and ``<rule>`` references."""
    heldout: bool = False
    """Only held-out rows use it (never ``split="train"``)."""
    rules: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Rules this construction replaces (e.g. ``obj`` by a relative clause)."""


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: its rules are dicts
class Grammar:
    """A family's instruction grammar: constructions over rules (see the module docstring).
    Checked when built: every referenced rule exists, every slot is a row placeholder, at
    least one construction is held out and one is not."""

    constructions: tuple[Construction, ...]
    rules: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """The family's rules, on top of :data:`COMMON_RULES`."""
    variants: int = VARIANTS
    """Grammar ids (surface variants) per construction: a family with few contents (sort
    has one) needs more for the same variety of text."""

    def __post_init__(self):
        from anyskill.envs.tabletop.families.base import PLACEHOLDERS

        object.__setattr__(self, "constructions", tuple(self.constructions))
        if self.variants < 1:
            raise ValueError(f"grammar: variants must be >= 1, got {self.variants}")
        names = [c.name for c in self.constructions]
        if len(set(names)) != len(names):
            raise ValueError(f"grammar: construction names must be unique, got {names}")
        if not any(c.heldout for c in self.constructions) or all(
            c.heldout for c in self.constructions
        ):
            raise ValueError(
                f"grammar: needs training and held-out constructions, got held out "
                f"{[c.heldout for c in self.constructions]} for {names}"
            )
        for c in self.constructions:
            rules = self.rules_of(c)
            for where, text in [(c.name, c.pattern)] + [
                (f"{c.name}: <{k}>", alt) for k, alts in rules.items() for alt in alts
            ]:
                missing = set(_REF.findall(text)) - set(rules)
                if missing:
                    raise ValueError(
                        f"grammar construction {where}: {text!r} uses undefined rules "
                        f"{sorted(missing)}; defined: {sorted(rules)}"
                    )
                slots = set(_SLOT.findall(text)) - PLACEHOLDERS
                if slots:
                    raise ValueError(
                        f"grammar construction {where}: {text!r} uses unknown slots "
                        f"{sorted(slots)}; known: {sorted(PLACEHOLDERS)}"
                    )

    @property
    def size(self) -> int:
        """Grammar ids per row content (constructions x variants)."""
        return len(self.constructions) * self.variants

    def construction(self, g: int) -> Construction:
        """The construction of grammar id ``g``."""
        if not 0 <= g < self.size:
            raise ValueError(f"grammar id must be in [0, {self.size}), got {g}")
        return self.constructions[g % len(self.constructions)]

    def rules_of(self, c: Construction) -> dict[str, tuple[str, ...]]:
        return {**COMMON_RULES, **self.rules, **c.rules}

    def render(self, row: tuple[int, ...], names: Mapping[str, str]) -> str:
        """The instruction of ``row`` (its phrasing a grammar id), ``names`` filling the
        slots. Pure: the same row always gives the same text."""
        from anyskill.envs.tabletop.families.base import PHRASING

        c = self.construction(row[PHRASING] - GRAMMAR_BASE)
        rules = self.rules_of(c)
        for salt in range(_SALTS):
            text = _expand(c.pattern, rules, f"{tuple(row)}/{salt}", [0])
            text = " ".join(text.format(**names).split())
            if len(_WORD.findall(text)) <= MAX_WORDS:  # words as the VLA's tokenizer counts
                return text
        raise ValueError(
            f"grammar construction {c.name!r}: no expansion of {MAX_WORDS} words or fewer for "
            f"row {tuple(row)} in {_SALTS} draws; shorten its rules"
        )


def _expand(text: str, rules: Mapping[str, tuple[str, ...]], seed: str, counter: list) -> str:
    """Replace every ``<rule>`` in ``text`` by one of its alternatives, chosen by a hash of
    ``seed`` and the choice's position in the expansion (depth first, left to right)."""

    def choose(m: re.Match) -> str:
        alts = rules[m.group(1)]
        counter[0] += 1
        pick = zlib.crc32(f"{seed}/{counter[0]}/{m.group(1)}".encode()) % len(alts)
        return _expand(alts[pick], rules, seed, counter)

    return _REF.sub(choose, text)


def lexicon(grammar: Grammar) -> set[str]:
    """Every literal word the grammar's patterns and rules contain (slots excluded), split as
    the VLA's tokenizer splits (lower-case ``[a-z0-9]+``)."""
    out: set[str] = set()
    for c in grammar.constructions:
        rules, todo, seen = grammar.rules_of(c), [c.pattern], set()
        while todo:  # only the rules the construction can reach
            text = todo.pop()
            out.update(_WORD.findall(_REF.sub(" ", _SLOT.sub(" ", text)).lower()))
            for ref in set(_REF.findall(text)) - seen:
                seen.add(ref)
                todo.extend(rules[ref])
    return out
