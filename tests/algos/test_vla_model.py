"""The π0-style policy's math: flow-matching integrator, block-causal attention, KV cache,
normalization, tokenization, and that the loss can be driven down."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anyskill.algos.vla.config import ModelConfig
from anyskill.algos.vla.data import Normalizer
from anyskill.algos.vla.model import VLA, Batch, Obs, PolicyModel, euler, sample_time
from anyskill.nets.transformer import TokenizeError, block_causal_mask, tokenize

TINY = ModelConfig(
    arch="vla",
    horizon=6,
    num_steps=5,
    image_size=16,
    patch_size=8,
    width=32,
    depth=2,
    heads=2,
    head_dim=8,
    action_width=24,
    max_text_len=8,
    mlp_width=64,
    state_dim=5,
    action_dim=3,
    num_cameras=1,
)


def random_obs(key, cfg: ModelConfig, b: int = 3) -> Obs:
    k1, k2, k3 = jax.random.split(key, 3)
    tokens = jax.random.randint(k3, (b, cfg.max_text_len), 1, 200)
    tokens = tokens.at[:, 5:].set(0)  # padded instructions
    return Obs(
        state=jax.random.normal(k1, (b, cfg.state_dim)),
        images=jax.random.randint(
            k2, (b, cfg.num_cameras, cfg.image_size, cfg.image_size, 3), 0, 255
        ).astype(jnp.uint8),
        tokens=tokens,
        text_mask=tokens != 0,
    )


def test_euler_integrates_a_constant_velocity_field_exactly():
    """dx/dt = c from t=1 to t=0: x0 = x1 - c, for any number of steps."""
    x1 = jnp.array([[0.5, -2.0, 3.0]])
    c = jnp.array([[1.25, 0.5, -4.0]])
    for n in (1, 3, 10):
        x0 = euler(lambda x, t: jnp.broadcast_to(c, x.shape), x1, n)
        np.testing.assert_allclose(x0, x1 - c, rtol=0, atol=1e-6)


def test_euler_recovers_the_chunk_under_the_ideal_velocity():
    """With x_t = t*noise + (1-t)*a the exact velocity field (x_t - a)/t carries any noise
    sample to the data point a: the sampler's time direction and step sizes are right."""
    a = jnp.array([[0.3, -0.7]])
    x1 = jnp.array([[2.0, 1.0]])
    x0 = euler(lambda x, t: (x - a) / t[:, None], x1, 10)
    np.testing.assert_allclose(x0, a, atol=1e-5)


def test_time_distribution_is_scaled_beta():
    t = np.asarray(sample_time(jax.random.key(0), (20000,)))
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6; scaled by 0.999 and shifted by 0.001
    assert abs(t.mean() - (0.999 * 0.6 + 0.001)) < 0.01


def test_block_causal_mask():
    prefix_mask = jnp.array([[True, True, False]])
    m = np.asarray(block_causal_mask(prefix_mask, 2))[0]
    # prefix rows: valid prefix columns only, never actions
    assert m[:3, :3].tolist() == [[True, True, False]] * 3
    assert not m[:3, 3:].any()
    # action rows: valid prefix and all actions
    assert m[3:].tolist() == [[True, True, False, True, True]] * 2


@pytest.mark.slow  # ~20 s of compilation; the KV-cache test covers the prefix
def test_changing_action_tokens_never_changes_prefix_outputs():
    model = PolicyModel(TINY)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), TINY)

    def prefix_out(x_t):
        net = VLA(TINY)

        def f(mdl):
            hp, mask = mdl.embed_prefix(obs)
            ha = mdl.embed_actions(x_t, jnp.full((3,), 0.5))
            for blk in mdl.blocks:
                hp, ha = blk.joint(hp, ha, mask)
            return hp, ha

        return net.apply(params, method=f)

    x_a = jax.random.normal(jax.random.key(2), (3, TINY.horizon, TINY.action_dim))
    x_b = x_a + 3.0
    hp_a, ha_a = prefix_out(x_a)
    hp_b, ha_b = prefix_out(x_b)
    np.testing.assert_array_equal(hp_a, hp_b)
    assert float(jnp.abs(ha_a - ha_b).max()) > 1e-3  # the actions did change something


def test_padding_tokens_do_not_change_outputs():
    """Whatever sits in padded text positions is invisible (masked keys)."""
    model = PolicyModel(TINY)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), TINY)
    junk = obs.replace(tokens=jnp.where(obs.text_mask, obs.tokens, 77))
    x = jax.random.normal(jax.random.key(2), (3, TINY.horizon, TINY.action_dim))
    t = jnp.full((3,), 0.3)
    v1 = model.net.apply(params, obs, x, t)
    v2 = model.net.apply(params, junk, x, t)
    np.testing.assert_allclose(v1, v2, atol=1e-5)


def test_cached_and_uncached_sampling_agree():
    model = PolicyModel(TINY)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), TINY)
    a = model.sample(params, jax.random.key(3), obs, cached=True)
    b = model.sample(params, jax.random.key(3), obs, cached=False)
    assert a.shape == (3, TINY.horizon, TINY.action_dim)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_normalization_round_trip():
    n = Normalizer(
        state_mean=jnp.array([1.0, -2.0]),
        state_std=jnp.array([2.0, 0.5]),
        action_mean=jnp.array([0.1, 0.2, 0.3]),
        action_std=jnp.array([0.5, 1.0, 2.0]),
    )
    a = jax.random.normal(jax.random.key(0), (4, 6, 3))
    np.testing.assert_allclose(n.unaction(n.action(a)), a, atol=1e-6)
    np.testing.assert_allclose(n.state(jnp.array([3.0, -1.5])), [1.0, 1.0], atol=1e-6)
    # a state feature far outside the data is clipped, not exploded
    assert float(n.state(jnp.array([1e6, 0.0]))[0]) == 10.0


def test_tokenize_words_and_length_error():
    tok, mask = tokenize(["Push the red disc!", "the RED"], 6)
    assert tok.shape == (2, 6) and mask[0].sum() == 4 and mask[1].sum() == 2
    # the same word gets the same token whatever its case or position
    assert tok[0, 1] == tok[1, 0] and tok[0, 2] == tok[1, 1]
    assert len(set(tok[0, :4].tolist())) == 4
    with pytest.raises(TokenizeError, match="3 words, longer than the policy's text context of 2"):
        tokenize("push it now", 2)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="arch must be one of"):
        ModelConfig(arch="rnn")


@pytest.mark.parametrize("arch", ["vla", "mlp-bc", "mlp-flow"])
def test_loss_decreases_on_a_tiny_overfit_set(arch):
    cfg = ModelConfig(**{**TINY.__dict__, "arch": arch})
    model = PolicyModel(cfg)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), cfg, b=8)
    actions = jax.random.normal(jax.random.key(2), (8, cfg.horizon, cfg.action_dim))
    batch = Batch(obs, actions, jnp.ones((8, cfg.horizon), bool))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        (loss, _), g = jax.value_and_grad(model.loss, has_aux=True)(params, key, batch)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state, loss

    losses = []
    for i in range(150):
        params, state, loss = step(params, state, jax.random.key(i))
        losses.append(float(loss))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(arch, first, last)
    assert last < 0.5 * first


# entity tokens: state 5 = one "robot" token [0, 2) and one "object" token [2, 5) whose
# features [2, 5) are a one-hot over three colour words
ENTITY = ModelConfig(
    **{
        **TINY.__dict__,
        "state_tokens": ((0, 2, 0), (2, 5, 1)),
        "state_token_words": ((), ((0, ("red", "green", "blue")),)),
    }
)


@pytest.mark.slow  # ~12 s of compilation
def test_entity_tokens_cached_and_uncached_agree():
    model = PolicyModel(ENTITY)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), ENTITY)
    a = model.sample(params, jax.random.key(3), obs, cached=True)
    b = model.sample(params, jax.random.key(3), obs, cached=False)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_entity_token_is_grounded_in_the_instruction():
    """The object's token changes when the instruction names its colour, and only its own
    colour's word matters."""
    model = PolicyModel(ENTITY)
    params = model.init(jax.random.key(0))
    state = jnp.array([[0.3, -0.2, 1.5, -0.6, -0.6]])  # normalized one-hot: "red"
    img = jnp.zeros((1, 1, 16, 16, 3), jnp.uint8)

    def prefix(text):
        tok = jnp.asarray(tokenize([text], 8)[0])
        obs = Obs(state=state, images=img, tokens=tok, text_mask=tok != 0)
        emb, _ = model.net.apply(params, obs, method=VLA.embed_prefix)
        return np.asarray(emb[0, -1])  # the object token

    red, green, plain = prefix("push the red one"), prefix("push the green one"), prefix("push it")
    assert not np.allclose(red, plain)  # its colour is mentioned
    np.testing.assert_allclose(green, plain, atol=1e-6)  # another colour: no mention


def test_guidance_with_beta_one_is_conditioned_sampling():
    for arch in ("vla", "mlp-flow"):
        cfg = ModelConfig(**{**TINY.__dict__, "arch": arch})
        model = PolicyModel(cfg)
        params = model.init(jax.random.key(0))
        obs = random_obs(jax.random.key(1), cfg)
        unc = random_obs(jax.random.key(2), cfg)
        a = model.sample(params, jax.random.key(3), obs)
        b = model.sample_guided(params, jax.random.key(3), obs, unc, beta=1.0)
        np.testing.assert_allclose(a, b, atol=1e-4)
        c = model.sample_guided(params, jax.random.key(3), obs, unc, beta=2.0)
        assert not np.allclose(a, c, atol=1e-3)


def test_ema_decay_warms_up_then_holds():
    """min(ema, (1 + t) / (10 + t)): 0.1 at the first update, 0.5 at t = 8, then the cap."""
    from anyskill.algos.vla.train import ema_decay

    np.testing.assert_allclose(
        [float(ema_decay(0.999, t)) for t in (0, 8, 90, 100_000)],
        [0.1, 0.5, 0.91, 0.999],
        rtol=1e-6,
    )


def test_train_step_ema_forgets_the_initialisation():
    """The EMA follows the warm-up decays (0.1, then 2/11, ...) rather than 0.999 from the
    start, so a short run is evaluated on weights it trained, not on its initialisation."""
    from anyskill.algos.vla.config import TrainConfig
    from anyskill.algos.vla.train import TrainState, make_optimizer, make_train_step

    model = PolicyModel(dataclasses.replace(TINY, arch="mlp-bc"))
    params = model.init(jax.random.key(0))
    opt = make_optimizer(TrainConfig(steps=10, warmup_steps=1, lr=1e-2))
    ts = TrainState(params, params, opt.init(params), jnp.int32(0), jax.random.PRNGKey(1))
    obs = random_obs(jax.random.key(2), model.cfg)
    batch = Batch(
        obs, jnp.ones((3, TINY.horizon, TINY.action_dim)), jnp.ones((3, TINY.horizon), bool)
    )
    step = make_train_step(model, opt, 0.999)
    ts1, _ = step(ts, batch)
    ts2, _ = step(ts1, batch)
    # decays 0.1 then 2/11 (the first update's learning rate is 0: warm-up starts at 0)
    ema1 = jax.tree.map(lambda p0, p1: 0.1 * p0 + 0.9 * p1, params, ts1.params)
    expect = jax.tree.map(lambda e, p2: 2 / 11 * e + 9 / 11 * p2, ema1, ts2.params)
    for e, x in zip(jax.tree.leaves(expect), jax.tree.leaves(ts2.ema), strict=True):
        np.testing.assert_allclose(x, e, rtol=1e-5, atol=1e-6)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(ts2.params), jax.tree.leaves(params), strict=True)
    ]
    assert any(moved)


def test_mention_order_tells_the_object_colour_from_the_zone_colour():
    """In "push the green block into the yellow zone" green is the 1st grounded word, block
    the 2nd, yellow the 3rd; in "go to the yellow area" yellow is the 1st."""
    from anyskill.algos.vla.model import grounded_vocab, mention_order

    words = (
        ((7, ("red", "green", "yellow")), (11, ("block", "disc"))),
        ((-1, ("yellow",)),),
    )
    vocab = grounded_vocab(words)
    assert vocab == ("red", "green", "yellow", "block", "disc")
    tokens, _ = tokenize(["push the green block into the yellow zone", "go to the yellow area"], 10)
    order = np.asarray(mention_order(jnp.asarray(tokens), words))
    got = [{w: int(order[b, vocab.index(w)]) for w in ("green", "block", "yellow")} for b in (0, 1)]
    assert got[0] == {"green": 0, "block": 1, "yellow": 2}
    assert got[1]["yellow"] == 0


@pytest.mark.parametrize("modulation", [False, True])
def test_indicator_embedding_starts_at_zero_then_conditions_the_actions(modulation):
    """``with_indicator`` adds a zero embedding (and, with ``indicator_modulation``, a zero
    modulation): the starting policy's chunks are unchanged whatever the indicator; once the
    embedding (or the modulation alone) is non-zero, positive and negative differ, in the
    cached and the uncached pass alike."""
    from anyskill.algos.vla import model as M

    plain = PolicyModel(TINY)
    start = plain.init(jax.random.key(0))
    model = PolicyModel(dataclasses.replace(TINY, indicator=True, indicator_modulation=modulation))
    params = model.with_indicator(start)
    obs = random_obs(jax.random.key(1), TINY)
    pos = obs.replace(indicator=jnp.full((3,), M.INDICATOR_POSITIVE, jnp.int32))
    neg = obs.replace(indicator=jnp.full((3,), M.INDICATOR_NEGATIVE, jnp.int32))
    ref = plain.sample(start, jax.random.key(3), obs)
    np.testing.assert_allclose(model.sample(params, jax.random.key(3), pos), ref, atol=1e-5)
    np.testing.assert_allclose(model.sample(params, jax.random.key(3), neg), ref, atol=1e-5)

    name = "indicator_mod" if modulation else "indicator"
    emb = 0.5 * jax.random.normal(jax.random.key(4), params["params"][name].shape)
    trained = {**params, "params": {**params["params"], name: emb}}
    a = model.sample(trained, jax.random.key(3), pos)
    b = model.sample(trained, jax.random.key(3), neg)
    assert not np.allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(
        a, model.sample(trained, jax.random.key(3), pos, cached=False), atol=1e-4
    )
    # guidance against the same observation with no indicator: beta 1 is conditioned sampling
    unc = obs.replace(indicator=jnp.zeros((3,), jnp.int32))
    g = model.sample_guided(trained, jax.random.key(3), pos, unc, beta=1.0)
    np.testing.assert_allclose(a, g, atol=1e-4)


def test_stream_modulation_against_its_equations():
    """adaLN rows: zero is the plain block; gates of -1 switch both residual branches off
    (the block returns its input); a norm scale of -1 zeroes the normalised input, so q/k/v
    are the projection's bias alone; a shift adds straight onto the normalised input."""
    from anyskill.nets.transformer import Stream

    s = Stream(8, 2, 4)
    h = jax.random.normal(jax.random.key(0), (2, 5, 8))
    att = jax.random.normal(jax.random.key(1), (2, 5, 2, 4))
    p = s.init(
        jax.random.key(2), h, att, method=lambda m, h, a: m.finish(h, a) + m.project(h)[0].sum()
    )
    zero = jnp.zeros((2, 6, 8))
    np.testing.assert_array_equal(
        s.apply(p, h, att, zero, method=Stream.finish), s.apply(p, h, att, method=Stream.finish)
    )
    for i in range(3):
        np.testing.assert_array_equal(
            s.apply(p, h, zero, method=Stream.project)[i], s.apply(p, h, method=Stream.project)[i]
        )
    off = zero.at[:, 2].set(-1.0).at[:, 5].set(-1.0)
    np.testing.assert_allclose(s.apply(p, h, att, off, method=Stream.finish), h, atol=1e-6)
    q, k, v = s.apply(p, h, zero.at[:, 1].set(-1.0), method=Stream.project)
    bias = p["params"]["qkv"]["bias"]  # [3, heads, hd]
    np.testing.assert_allclose(q, jnp.broadcast_to(bias[0], q.shape), atol=1e-6)
    np.testing.assert_allclose(v, jnp.broadcast_to(bias[2], v.shape), atol=1e-6)
    shift = jax.random.normal(jax.random.key(3), (2, 8))
    q2 = s.apply(p, h, zero.at[:, 0].set(shift), method=Stream.project)[0]
    normed = s.apply(p, h, method=lambda m, h: m.norm1(h))
    kernel = p["params"]["qkv"]["kernel"][:, 0]  # [width, heads, hd]
    want = jnp.einsum("btw,whd->bthd", normed + shift[:, None], kernel) + bias[0]
    np.testing.assert_allclose(q2, want, atol=1e-5)


def test_indicator_input_needs_a_model_built_for_it():
    model = PolicyModel(TINY)
    params = model.init(jax.random.key(0))
    obs = random_obs(jax.random.key(1), TINY).replace(indicator=jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="indicator=True"):
        model.sample(params, jax.random.key(3), obs)
    with pytest.raises(ValueError, match="needs arch 'vla'"):
        ModelConfig(arch="mlp-flow", indicator=True)
    with pytest.raises(ValueError, match="needs indicator=True"):
        ModelConfig(indicator_modulation=True)


def test_without_a_declared_layout_the_state_is_one_token():
    """Prefix: patches per camera, the instruction, then one state token (a linear
    projection of the whole state) — or one per declared entity."""
    two_cams = dataclasses.replace(TINY, num_cameras=2)
    patches = (TINY.image_size // TINY.patch_size) ** 2
    for cfg, state_tokens in ((two_cams, 1), (ENTITY, 2)):
        model = PolicyModel(cfg)
        params = model.init(jax.random.key(0))
        emb, _ = model.net.apply(
            params, random_obs(jax.random.key(1), cfg), method=VLA.embed_prefix
        )
        assert emb.shape[1] == cfg.num_cameras * patches + cfg.max_text_len + state_tokens
    assert "state_proj" in PolicyModel(two_cams).init(jax.random.key(0))["params"]
