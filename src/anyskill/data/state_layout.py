"""A structured state a dataset declares: which slices of ``observation.state`` are entities.

Most robot datasets have a flat proprioceptive state, and a policy reads it as one vector.
A dataset whose state is a list of entities (the tabletop: a pusher, object slots, zones) may
declare that layout, so a transformer policy reads one token per entity and can ground an
instruction's words in the entities they name. The declaration lives in
``meta/info.json``, in the ``info`` object of the ``observation.state`` feature (LeRobot
readers ignore it)::

    "observation.state": {"dtype": "float32", "shape": [54], "names": null,
      "info": {"anyskill.state_tokens": [
        {"start": 0, "stop": 4, "kind": 0, "words": []},
        {"start": 4, "stop": 18, "kind": 1,
         "words": [[7, ["red", "green", "blue", "yellow"]], [11, ["block", "disc", "bar"]]]},
        {"start": 46, "stop": 48, "kind": 2, "words": [[-1, ["red"]]]},
        ...]}}

One entry per token: the state slice ``[start, stop)``; ``kind``, an integer shared by
entities of the same type (they share a projection); ``words``, ``[offset, names]`` pairs: with
offset -1 the token always carries these words (a red zone), otherwise the slice's features
``[offset, offset + len(names))`` are a one-hot over ``names`` (an object's colour).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from anyskill.data.format import Feature, SchemaMismatchError

#: key of the declaration in the state feature's ``info``
STATE_TOKENS = "anyskill.state_tokens"

Slices = tuple[tuple[int, int, int], ...]
Words = tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The entity tokens of a state vector (the form ``ModelConfig.state_tokens`` and
    ``state_token_words`` take)."""

    tokens: Slices
    """``(start, stop, kind)`` per token."""
    words: Words
    """Per token, its ``(offset, names)`` pairs (empty tuple: no words)."""

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "start": a,
                "stop": b,
                "kind": k,
                "words": [[off, list(names)] for off, names in self.words[i]] if self.words else [],
            }
            for i, (a, b, k) in enumerate(self.tokens)
        ]

    @staticmethod
    def from_json(raw: Any, dim: int, where: Path | str) -> StateLayout:
        """Parse and check a declaration for a state of ``dim`` features; errors name
        ``where`` (the info.json) and the entry."""
        field = f"features['observation.state'].info[{STATE_TOKENS!r}]"

        def bad(problem: str) -> SchemaMismatchError:
            return SchemaMismatchError(
                where,
                f"{field}{problem}",
                "fix the declaration (see anyskill.data.state_layout) or remove it to read the "
                "state as one vector",
            )

        if not isinstance(raw, list) or not raw:
            raise bad(f": expected a non-empty list of tokens, got {raw!r}")
        tokens, words = [], []
        for i, t in enumerate(raw):
            if not isinstance(t, dict) or not {"start", "stop", "kind"} <= set(t):
                raise bad(f"[{i}]: expected an object with start, stop, kind, got {t!r}")
            a, b, k = t["start"], t["stop"], t["kind"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (a, b, k)):
                raise bad(f"[{i}]: start, stop, kind must be integers, got {a!r}, {b!r}, {k!r}")
            if not 0 <= a < b <= dim:
                raise bad(f"[{i}]: slice [{a}, {b}) is empty or outside the state's {dim} features")
            segs = []
            for w in t.get("words", []):
                ok = isinstance(w, list | tuple) and len(w) == 2 and isinstance(w[0], int)
                if not ok or not isinstance(w[1], list | tuple) or not w[1]:
                    raise bad(f"[{i}].words: expected [offset, [names...]] pairs, got {w!r}")
                off, names = w[0], tuple(str(n) for n in w[1])
                if off != -1 and not 0 <= off <= off + len(names) <= b - a:
                    raise bad(
                        f"[{i}].words: one-hot [{off}, {off + len(names)}) lies outside the "
                        f"token's {b - a} features"
                    )
                segs.append((off, names))
            tokens.append((a, b, k))
            words.append(tuple(segs))
        # no words anywhere: no grounding (the model's state_token_words stays empty)
        return StateLayout(tuple(tokens), tuple(words) if any(words) else ())


def declare(feature: Feature, layout: StateLayout) -> Feature:
    """``feature`` (the state) with ``layout`` declared in its ``info``."""
    return dataclasses.replace(
        feature, info={**(feature.info or {}), STATE_TOKENS: layout.to_json()}
    )


def declared(feature: Feature, where: Path | str) -> StateLayout | None:
    """The layout the state ``feature`` declares, or None (read it as one vector)."""
    raw = (feature.info or {}).get(STATE_TOKENS)
    if raw is None:
        return None
    dim = 1
    for s in feature.shape:
        dim *= s
    return StateLayout.from_json(raw, dim, where)
