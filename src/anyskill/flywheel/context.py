"""What every phase of a flywheel run works with: its config, its files, the starting
policy's model and weights, the value function, the env and the deployment of policies.

:meth:`RunContext.open` is the run's set-up: it records the scripted demonstrations and
trains the starting policy when they are not there yet (both resume), then loads them. The
demonstrations of a tabletop task mix are :func:`anyskill.data.record.record_expert`'s; an
adapter env's (gym-pusht) are its scripted expert run through the one rollout and written
under LeRobot feature names, each episode as it ends.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from anyskill import checkpoint
from anyskill.algos.recap.policy import indicator_model
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.config import TrainConfig
from anyskill.algos.vla.data import Normalizer, TrainingData
from anyskill.algos.vla.model import PolicyModel
from anyskill.algos.vla.policy import VLAPolicy
from anyskill.data.reader import Dataset
from anyskill.envs.adapters import ADAPTER_ENVS
from anyskill.flywheel.artifacts import RunPaths
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.deployment import Deployment, RunEnv, purpose_seed


def log(msg: str) -> None:
    print(f"[flywheel {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclasses.dataclass
class RunContext:
    cfg: FlywheelConfig
    paths: RunPaths
    model: PolicyModel
    """The policy architecture of every method (with an indicator input unless the
    indicator is words of the prompt)."""
    normalizer: Normalizer
    """The starting policy's statistics, kept by every fine-tuned policy."""
    start_params: Any
    vf: ValueFunction
    env: RunEnv
    """The env (a tabletop task mix or an adapter env) as the rollouts run it."""
    deployment: Deployment
    robots_listening: Any = None
    """``--deploy robots``: called with the server's URL once robots can connect (tests start
    their simulated robots there)."""

    @property
    def horizon(self) -> int:
        """Steps per episode (the value targets' time scale)."""
        return self.env.horizon

    @classmethod
    def open(cls, cfg: FlywheelConfig, human: Any = None) -> RunContext:
        """Set up the run in ``cfg.run_dir`` (demonstrations, starting policy) and load it.
        ``human``: the person correcting with ``--corrector.kind human`` (None: the
        terminal's keyboard)."""
        paths = RunPaths(cfg.run_dir)
        _record_demos(cfg, paths)
        _train_start(cfg, paths)
        start = VLAPolicy(paths.start, seed=cfg.seed)
        normalizer = start.normalizer
        # one model for every method: with an input indicator, the baselines never set it
        model, start_params = indicator_model(start.model, start.params, cfg.indicator)
        base = start.with_weights(start_params, model) if model is not start.model else start
        vf = ValueFunction(model.cfg, cfg.value)
        env = RunEnv.open(cfg, model.cfg.image_size, paths.data)
        deployment = Deployment(cfg, env, base, vf, human)
        return cls(cfg, paths, model, normalizer, start_params, vf, env, deployment)

    def dataset(self) -> Dataset:
        return Dataset.open(self.paths.data)

    def training_data(self, seed: int, **sampler_kw) -> TrainingData:
        """Batches of the whole store for this run's model, normalised with the starting
        policy's statistics (``sampler_kw``: e.g. ``success=True`` for filtered BC)."""
        return TrainingData.build(
            self.dataset(),
            self.model.cfg,
            self.cfg.batch_size,
            seed,
            normalizer=self.normalizer,
            **sampler_kw,
        )

    def policy_params(self, name: str) -> Any:
        """The latest weights of method ``name`` (the starting policy's before its first
        fine-tuning)."""
        path = self.paths.policy(name)
        if path.exists():
            return checkpoint.load(path, self.start_params)[0]
        return self.start_params

    def save_policy(self, name: str, params: Any, rnd: int) -> None:
        checkpoint.save(self.paths.policy(name), params, {"round": rnd})

    def value(self) -> tuple[Any, dict]:
        """The latest value function and its metadata (``round``: the round it was trained
        in, ``trained_on_episodes``: it saw the store's episodes ``[0, n)``); ``(None, {})``
        if there is none yet."""
        if not self.paths.value.exists():
            return None, {}
        return checkpoint.load(self.paths.value, self.vf.init(jax.random.key(0)))


def _copy_demos(c: FlywheelConfig, paths: RunPaths) -> None:
    """``--demo-data``: the given dataset becomes the run's data/ (copied whole, then renamed
    into place, so a killed copy leaves no half store); refused when its features are not
    those the env's rollouts record."""
    import shutil

    if (paths.data / "meta").exists():
        return
    src = Path(c.demo_data)
    ds = Dataset.open(src)  # a clear error when it is not an episode store
    want = {"observation.state": None, "action": None}
    if c.simulated:  # the env's rollouts record features of these shapes beside them
        env = RunEnv.open(c, c.model.image_size)
        fields = env.batch_env("demos").offered()
        want["observation.state"] = fields["observation.state"].shape
        if "observation.goal" in fields:
            want["observation.goal"] = fields["observation.goal"].shape
    for name, shape in want.items():
        if name not in ds.info.features:
            raise ValueError(
                f"--demo-data {src}: no feature {name!r} (it has {sorted(ds.info.features)}); "
                f"the flywheel stores --env {c.env}'s episodes beside them, with {sorted(want)}"
            )
        have = tuple(ds.info.features[name].shape)
        if shape is not None and have != tuple(shape):
            raise ValueError(
                f"--demo-data {src}: {name} has shape {list(have)}, --env {c.env} records "
                f"{list(shape)}; record the demonstrations on the same robot/env"
            )
    unlabelled = int((np.asarray(ds.episodes.success) < 0).sum())
    if unlabelled:
        raise ValueError(
            f"--demo-data {src}: {unlabelled} of its {ds.num_episodes} episodes have no success "
            f"label (the value function learns from them); label them with `anyskill label {src}`"
        )
    log(f"copying {ds.num_episodes} demonstrations from {src} ...")
    tmp = paths.data.with_name(paths.data.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".anyskill-writer.lock"))
    tmp.rename(paths.data)


def _record_demos(c: FlywheelConfig, paths: RunPaths) -> None:
    if c.demo_data is not None:
        _copy_demos(c, paths)
        return
    have = Dataset.open(paths.data).num_episodes if (paths.data / "meta").exists() else 0
    if have >= c.demos:
        return
    log(f"recording {c.demos - have} scripted demonstrations of {c.env} ...")
    if c.env in ADAPTER_ENVS:
        from anyskill.data.record import record_adapter_expert

        # episode i of the demonstrations starts from the seeds of purpose "demos"
        record_adapter_expert(
            paths.data,
            c.env,
            episodes=c.demos - have,
            noise=c.demo_noise,
            seed=c.seed,
            max_steps=c.max_steps,
            reset_seed=purpose_seed(c.seed, "demos"),
        )
        return
    from anyskill.data.record import record_expert

    record_expert(
        paths.data,
        c.env,
        episodes=c.demos - have,
        noise=c.demo_noise,
        seed=c.seed,
        progress=None,
    )


def _train_start(c: FlywheelConfig, paths: RunPaths) -> None:
    from anyskill.algos.vla.train import train

    ckpt = paths.start / "checkpoint.msgpack"
    if ckpt.exists() and checkpoint.load_meta(ckpt).get("step", 0) >= c.init_steps:
        return
    log(f"training the starting policy ({c.model.arch}, {c.init_steps} steps) ...")
    train(
        TrainConfig(
            data=(paths.data,),
            model=c.model,
            run_dir=paths.start,
            steps=c.init_steps,
            batch_size=c.batch_size,
            lr=c.lr,
            replan_every=c.replan_every,
            eval_every=0,
            eval_episodes=0,  # the flywheel evaluates it itself (round 0)
            eval_split=("train",),
            seed=c.seed,
            resume=ckpt.exists(),
            progress=c.progress,
        )
    )
