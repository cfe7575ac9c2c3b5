"""Tiny run directories with randomly initialised weights, in the formats the checkpoint
loaders read: a policy run (``anyskill train policy``), a flywheel run and a CRL run.

They hold no trained behaviour: they exist so that loading, wrapping and serving can be
checked in seconds, against the in-memory weights they were written from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill import checkpoint, rundir
from anyskill.algos.recap.value import ValueConfig, ValueFunction
from anyskill.algos.vla.config import ModelConfig, TrainConfig
from anyskill.algos.vla.data import Normalizer
from anyskill.algos.vla.model import PolicyModel
from anyskill.algos.vla.train import TrainState, make_optimizer
from anyskill.policies.base import IMAGE, PROMPT, STATE

STATE_DIM, ACTION_DIM, IMAGE_SIZE = 5, 2, 8


def tiny_model(arch: str = "vla") -> ModelConfig:
    """A model that compiles in about a second: one camera of 8x8, a 12-word context."""
    common = dict(
        horizon=4, num_steps=3, max_text_len=12, state_dim=STATE_DIM, action_dim=ACTION_DIM,
        num_cameras=1, image_size=IMAGE_SIZE, patch_size=4,
    )  # fmt: skip
    if arch == "vla":
        return ModelConfig(
            arch="vla", width=32, depth=1, heads=2, head_dim=8, action_width=16, **common
        )
    return ModelConfig(arch=arch, width=16, depth=2, mlp_width=32, **common)


def random_normalizer(seed: int) -> Normalizer:
    r = np.random.default_rng(seed)
    return Normalizer(
        jnp.asarray(r.normal(size=STATE_DIM), jnp.float32),
        jnp.asarray(r.uniform(0.5, 2.0, STATE_DIM), jnp.float32),
        jnp.asarray(r.normal(size=ACTION_DIM), jnp.float32),
        jnp.asarray(r.uniform(0.5, 2.0, ACTION_DIM), jnp.float32),
    )


def random_like(template, seed: int, scale: float = 0.3):
    """Gaussian weights (numpy, so no compile) in the structure and shapes of ``template``
    (e.g. ``jax.eval_shape(model.init, key)``)."""
    r = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (
            (scale * r.normal(size=s.shape)).astype(s.dtype)
            if np.issubdtype(s.dtype, np.floating)
            else np.zeros(s.shape, s.dtype)
        ),
        template,
    )


def write_policy_run(run: Path, cfg: ModelConfig, seed: int = 0):
    """A policy run as ``anyskill train policy`` leaves it, with random weights; returns
    ``(model, normalizer, params)``."""
    model = PolicyModel(cfg)
    params = random_like(jax.eval_shape(model.init, jax.random.key(0)), seed)
    norm = random_normalizer(seed)
    tcfg = TrainConfig(data=(Path("demos"),), model=cfg, run_dir=run, steps=1)
    rundir.write_json(run / "config.json", rundir.config_to_json(tcfg))
    opt = make_optimizer(tcfg)
    opt_state = random_like(jax.eval_shape(opt.init, params), seed, scale=0.0)
    ts = TrainState(params, params, opt_state, np.int32(1), np.zeros(2, np.uint32))
    tree = {"train": ts, "ema": params, "normalizer": norm}
    checkpoint.save(run / "checkpoint.msgpack", tree, {"step": 1})
    return model, norm, params


def _perturbed(params, seed: int, scale: float = 0.3):
    """Every weight moved by Gaussian noise (so that each method acts differently, and a
    zero-initialised indicator input matters)."""
    noise = random_like(jax.eval_shape(lambda p: p, params), seed, scale)
    return jax.tree.map(lambda x, n: np.asarray(x) + n, params, noise)


@dataclasses.dataclass
class FlywheelParts:
    """What a flywheel run was written from: the model every method shares, the normaliser,
    each method's weights, and the value function."""

    model: PolicyModel
    normalizer: Normalizer
    params: dict[str, Any]
    vf: ValueFunction
    value_params: Any


def write_flywheel_run(
    run: Path, arch: str = "vla", indicator: str = "prompt", beta: float = 2.0
) -> FlywheelParts:
    """A flywheel run after one round: config, state, starting policy, every method's weights
    and the value function (random, perturbed per method)."""
    from anyskill.flywheel.config import FlywheelConfig

    cfg = tiny_model(arch)
    fcfg = FlywheelConfig(
        env="tabletop-reach",
        run_dir=run,
        rounds=1,
        model=cfg,
        indicator=indicator,
        beta=beta,
        value=ValueConfig(steps=1, finetune_steps=1, batch_size=4, hidden=16),
        replan_every=cfg.horizon,
        progress=False,
    )
    run.mkdir(parents=True)
    rundir.write_json(run / "config.json", rundir.config_to_json(fcfg))
    rundir.write_json(run / "state.json", {"round": 2, "done": [], "rows": [], "detection": []})
    model, norm, start = write_policy_run(run / "start", cfg)
    if indicator != "prompt":
        model = PolicyModel(
            dataclasses.replace(cfg, indicator=True, indicator_modulation=indicator == "modulation")
        )
        start = model.with_indicator(start)
    params = {"start": start}
    for i, name in enumerate(("recap", "bc", "filtered")):
        params[name] = _perturbed(start, 10 + i)
        checkpoint.save(run / "policies" / f"{name}.msgpack", params[name], {"round": 1})
    vf = ValueFunction(model.cfg, fcfg.value)
    value_params = random_like(jax.eval_shape(vf.init, jax.random.key(0)), 20)
    checkpoint.save(run / "value.msgpack", value_params, {"round": 1, "trained_on_episodes": 0})
    return FlywheelParts(model, norm, params, vf, value_params)


def write_crl_run(run: Path, config) -> None:
    """A CRL run as ``anyskill train crl`` leaves it after its first evaluation, with the
    freshly initialised training state."""
    from anyskill.algos.crl.train import make_train

    state = jax.jit(make_train(config).init_state)(jax.random.PRNGKey(config.seed))
    run.mkdir(parents=True)
    rundir.write_json(run / "config.json", rundir.config_to_json(config), indent=2)
    checkpoint.save(run / "checkpoint.msgpack", state, {"epoch": 0, "env_steps": 0})


def vla_batch(n: int = 3, seed: int = 0) -> dict:
    """``n`` observations a tiny VLA reads (random state and camera, varied prompts)."""
    r = np.random.default_rng(seed)
    prompts = ["push the red block", "go to the blue zone", "reach the green area now"]
    return {
        STATE: r.normal(size=(n, STATE_DIM)).astype(np.float32),
        IMAGE: r.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
        PROMPT: [prompts[i % len(prompts)] for i in range(n)],
    }
