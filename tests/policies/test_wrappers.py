"""Test-time compute wrappers: RECAP's indicator and guidance, best-of-N — the samples the
model's equations give on hand-built inputs, and clear refusals of what cannot be wrapped."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from policy_runs import vla_batch, write_flywheel_run

from anyskill.algos.vla.policy import VLAPolicy
from anyskill.policies.base import (
    INDICATOR,
    INDICATOR_NONE,
    INDICATOR_POSITIVE,
    PROMPT,
    STATE,
    ChunkPolicy,
    InputSpec,
    ObservationError,
    PolicySpec,
    prompt_with_indicator,
)
from anyskill.policies.registry import load_policy
from anyskill.policies.wrappers import BestOfN, HotSwap, IndicatorConditioned


def _sample(model, norm, params, key, cond, uncond=None, beta=1.0):
    """The reference: the model's sampler on hand-built inputs (normalised state), in env
    units — plain sampling of ``cond``, or guidance ``v_u + beta (v_c - v_u)``."""

    def fn(params, key, cond, uncond):
        cond = cond.replace(state=norm.state(cond.state))
        if uncond is None:
            return norm.unaction(model.sample(params, key, cond))
        uncond = uncond.replace(state=norm.state(uncond.state))
        return norm.unaction(model.sample_guided(params, key, cond, uncond, beta))

    return np.asarray(jax.jit(fn)(params, key, cond, uncond))


@pytest.mark.parametrize(
    "arch, indicator",
    [
        ("mlp-flow", "prompt"),
        pytest.param("vla", "prompt", marks=pytest.mark.slow),  # ~12 s each
        ("vla", "embedding"),
        pytest.param("vla", "modulation", marks=pytest.mark.slow),
    ],
)
def test_served_flywheel_policies_sample_what_recap_asks(tmp_path, arch, indicator):
    """``anyskill serve RUN`` (the registry's flywheel loader: VLA weights wrapped in
    IndicatorConditioned and BestOfN) samples, for the same weights, key and observations:
    RECAP asked for "advantage: positive" (the prompt's words, or the indicator input set to
    positive) with β = 1, guided against the plain prompt / no indicator with the run's
    β = 2, the best of 3 candidates by the value function's ``Q(s, chunk)`` on the plain
    instruction, and a baseline plainly. (Before the flywheel's chunk functions were
    deleted, these policies equalled them bit for bit; the flywheel now deploys them.)"""
    from anyskill.algos.vla.model import INDICATOR_NONE, INDICATOR_POSITIVE

    run = tmp_path / "fw"
    parts = write_flywheel_run(run, arch, indicator, beta=2.0)
    model, norm, params = parts.model, parts.normalizer, parts.params
    batch = vla_batch(3)
    key = jax.random.key(7)
    reader = VLAPolicy(run / "start")  # builds the model inputs from the batch
    plain = reader.to_obs(batch)
    if indicator == "prompt":
        suffixed = {**batch, PROMPT: [prompt_with_indicator(p, True) for p in batch[PROMPT]]}
        cond, uncond = reader.to_obs(suffixed), plain
    else:
        cond = plain.replace(indicator=np.full(3, INDICATOR_POSITIVE, np.int32))
        uncond = plain.replace(indicator=np.full(3, INDICATOR_NONE, np.int32))

    recap = load_policy(run)  # the run's β = 2
    assert isinstance(recap, IndicatorConditioned) and recap.beta == 2.0
    guided = recap.act(batch, key)
    assert guided.dtype == np.float32 and guided.shape == (3, 4, 2)
    want = _sample(model, norm, params["recap"], key, cond, uncond, beta=2.0)
    np.testing.assert_allclose(guided, want, atol=1e-5)
    one = load_policy(run, beta=1.0).act(batch, key)
    np.testing.assert_allclose(one, _sample(model, norm, params["recap"], key, cond), atol=1e-5)
    assert not np.allclose(one, guided, atol=1e-3)  # guidance changes the chunks

    # best of 3: the batch's rows repeated, one draw of noise, the candidate Q ranks highest
    best = load_policy(run, best_of=3)
    assert isinstance(best, BestOfN) and isinstance(best.inner, IndicatorConditioned)
    tiled = {k: [v[i] for i in (0, 0, 0, 1, 1, 1, 2, 2, 2)] for k, v in batch.items()}
    tiled = {k: v if k == PROMPT else np.stack(v) for k, v in tiled.items()}
    candidates = recap.act(tiled, key)
    vobs = reader.to_obs(tiled)
    vobs = vobs.replace(state=norm.state(vobs.state))
    q = np.asarray(parts.vf.expected(parts.value_params, vobs, norm.action(candidates)))
    pick = q.reshape(3, 3).argmax(1)
    want = candidates.reshape(3, 3, 4, 2)[np.arange(3), pick]
    np.testing.assert_array_equal(best.act(batch, key), want)
    # the selection matters: the best candidate is not always the first one drawn
    assert not np.array_equal(want, guided)

    # a VLA without an indicator input refuses the field rather than ignore it
    if indicator == "prompt":
        with pytest.raises(ValueError, match="advantage-indicator input"):
            IndicatorConditioned(reader, "input")
        with pytest.raises(ObservationError, match=f"{INDICATOR}: .* no advantage-indicator"):
            reader.act({**batch, INDICATOR: np.ones(3, np.int32)}, key)
    else:
        with pytest.raises(ObservationError, match=r"expected 3 integers in \(0, 1, 2\)"):
            recap.inner.act({**batch, INDICATOR: np.full(3, 5)}, key)

    want = _sample(model, norm, params["bc"], key, plain)
    np.testing.assert_allclose(load_policy(run, policy_name="bc").act(batch, key), want, atol=1e-5)


class Echo(ChunkPolicy):
    """A numpy policy that shows what it was given: action ``[i, h, :]`` is ``state[i, 0]``
    plus ``h``, plus 100 when row ``i``'s prompt ends with the positive indicator words,
    plus 10x the INDICATOR field when present. ``act_guided`` returns the guided mix of the
    two, so the guidance arithmetic is visible."""

    def __init__(self, accepts_indicator: bool = False, max_words: int = 8):
        self.accepts_indicator = accepts_indicator
        self.spec = PolicySpec(
            (
                InputSpec(STATE, (2,), "float32"),
                InputSpec(PROMPT, (), "str", max_length=max_words),
            ),
            action_dim=1,
            action_horizon=3,
            control_hz=10.0,
            name="echo",
        )

    def act(self, obs, key):
        state = np.asarray(obs[STATE], np.float32)
        pos = np.array([p.endswith(prompt_with_indicator("", True)) for p in obs[PROMPT]])
        ind = np.asarray(obs.get(INDICATOR, np.zeros(len(state))), np.float32)
        base = state[:, 0] + 100.0 * pos + 10.0 * ind
        return (base[:, None, None] + np.arange(3)[None, :, None]).astype(np.float32)

    def act_guided(self, cond, uncond, beta, key):
        vc, vu = self.act(cond, key), self.act(uncond, key)
        return vu + beta * (vc - vu)


class NoGuidance(Echo):
    act_guided = None  # type: ignore[assignment]


def _rows(*states):
    return {STATE: np.array([[s, 0.0] for s in states], np.float32), PROMPT: ["go"] * len(states)}


def test_indicator_conditioning_and_guidance_compose():
    key = jax.random.key(0)
    obs = _rows(1.0, 2.0)
    words = IndicatorConditioned(Echo(), "prompt")
    np.testing.assert_array_equal(words.act(obs, key)[:, 0, 0], [101.0, 102.0])
    # the prompt's budget leaves room for the two indicator words
    assert {s.name: s.max_length for s in words.spec.inputs}[PROMPT] == 6
    assert words.spec.name == "echo+recap"
    guided = IndicatorConditioned(Echo(), "prompt", beta=3.0)  # u + 3 (c - u) = s + 300
    np.testing.assert_array_equal(guided.act(obs, key)[:, 0, 0], [301.0, 302.0])
    field = IndicatorConditioned(Echo(accepts_indicator=True), "input", beta=2.0)
    cond, uncond = field.split(obs)
    assert list(cond[INDICATOR]) == [INDICATOR_POSITIVE] * 2
    assert list(uncond[INDICATOR]) == [INDICATOR_NONE] * 2
    assert cond[STATE] is uncond[STATE]  # the same rows: a VLA shares their prefix
    np.testing.assert_array_equal(field.act(obs, key)[:, 0, 0], [21.0, 22.0])
    # served like any policy: infer validates nothing new (the client never sends INDICATOR)
    assert INDICATOR not in field.spec.metadata()["inputs"]
    row = field.spec.validate({STATE: np.array([5.0, 0.0]), PROMPT: "go"})
    np.testing.assert_array_equal(field.infer([row])[0, :, 0], [25.0, 26.0, 27.0])


def test_wrappers_refuse_what_they_cannot_do():
    with pytest.raises(TypeError, match="beta=2.0 needs classifier-free guidance.*act_guided"):
        IndicatorConditioned(NoGuidance(), "prompt", beta=2.0)
    IndicatorConditioned(NoGuidance(), "prompt", beta=1.0)  # no guidance needed
    with pytest.raises(ValueError, match="advantage-indicator input"):
        IndicatorConditioned(Echo(), "input")
    with pytest.raises(ValueError, match="kind must be one of"):
        IndicatorConditioned(Echo(), "embedding")
    with pytest.raises(ValueError, match="leaves no room"):
        IndicatorConditioned(Echo(max_words=2), "prompt")
    with pytest.raises(ValueError, match="beta must be a finite number"):
        IndicatorConditioned(Echo(), "prompt", beta=float("nan"))
    with pytest.raises(TypeError, match="wraps a Policy"):
        BestOfN(object(), Score(), 2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        BestOfN(Echo(), Score(), 0)


@dataclasses.dataclass
class Score:
    """Scores a chunk by minus the distance of its first action to ``target``."""

    target: float = 0.0
    calls: list = dataclasses.field(default_factory=list)

    def score(self, obs, chunks):
        self.calls.append((list(obs[PROMPT]), chunks.shape))
        return -np.abs(chunks[:, 0, 0] - self.target)


class Noisy(Echo):
    """Echo plus a different offset per row of the batch (as noise differs per row)."""

    def act(self, obs, key):
        out = super().act(obs, key)
        return out + np.arange(len(out), dtype=np.float32)[:, None, None]


def test_best_of_n_returns_each_rows_best_candidate():
    scorer = Score(target=3.0)
    best = BestOfN(IndicatorConditioned(Noisy(), "prompt"), scorer, n=4)
    # rows repeated 4 times: row 0's candidates are 100 + s + [0, 1, 2, 3] = [1, 2, 3, 4],
    # row 1's 100 + s + [4, 5, 6, 7] = [-2, -1, 0, 1]
    out = best.act(_rows(-99.0, -106.0), jax.random.key(0))
    np.testing.assert_array_equal(out[:, 0, 0], [3.0, 1.0])  # the closest to 3 in each row
    ((prompts, shape),) = scorer.calls
    assert shape == (8, 3, 1) and prompts == ["go"] * 8  # scored on the plain prompt
    assert best.spec.name == "echo+recap+best-of-4"

    class Wrong(Score):
        def score(self, obs, chunks):
            return np.zeros(3)

    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(8,\)"):
        BestOfN(Noisy(), Wrong(), n=4).act(_rows(0.0, 1.0), jax.random.key(0))


def test_hot_swap_serves_the_new_weights_from_the_next_call_and_keeps_the_spec():
    key = jax.random.key(0)
    live = HotSwap(Echo(), version=0)
    row = live.spec.validate({STATE: np.array([5.0, 0.0]), PROMPT: "go"})
    np.testing.assert_array_equal(live.infer([row])[0, :, 0], [5.0, 6.0, 7.0])
    # the "new weights": the same spec, other actions
    new = Echo(accepts_indicator=True)
    new.act = lambda obs, key: Echo.act(new, obs, key) + 50.0
    live.swap(new, version=3)
    assert live.version == 3 and live.spec == Echo().spec
    with pytest.raises(ValueError, match="spec differs"):  # inputs announced to robots change
        live.swap(IndicatorConditioned(Echo(max_words=10), "prompt"), version=4)
    assert live.version == 3
    np.testing.assert_array_equal(live.act(_rows(1.0), key)[0, :, 0], [51.0, 52.0, 53.0])
    np.testing.assert_array_equal(live.infer([row])[0, :, 0], [55.0, 56.0, 57.0])
    # what the server calls: a plain inner policy has no subtasks, a hierarchical one does
    chunks, subtasks = live.infer_subtasks([row])
    assert subtasks is None and chunks[0, 0, 0] == 55.0
    new.infer_subtasks = lambda batch: (new.infer(batch), ["push the red block"] * len(batch))
    assert live.infer_subtasks([row])[1] == ["push the red block"]
    with pytest.raises(TypeError, match="HotSwap wraps a Policy"):
        HotSwap(object())
