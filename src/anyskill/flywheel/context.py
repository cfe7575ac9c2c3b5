"""What every phase of a flywheel run works with: its config, its files, the starting
policy's model and weights, the value function, the env and the deployment of policies.

:meth:`RunContext.open` is the run's set-up: it records the scripted demonstrations and
trains the starting policy when they are not there yet (both resume), then loads them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

from anyskill import checkpoint
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.config import TrainConfig
from anyskill.algos.vla.data import Normalizer, TrainingData
from anyskill.algos.vla.model import PolicyModel
from anyskill.algos.vla.train import load_run
from anyskill.data.reader import Dataset
from anyskill.flywheel.artifacts import RunPaths
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.deployment import Deployment


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
    env: Any
    deployment: Deployment

    @property
    def horizon(self) -> int:
        """The env's episode length (the value targets' time scale)."""
        return int(self.env.episode_length)

    @classmethod
    def open(cls, cfg: FlywheelConfig, human: Any = None) -> RunContext:
        """Set up the run in ``cfg.run_dir`` (demonstrations, starting policy) and load it.
        ``human``: the person correcting with ``--corrector.kind human`` (None: the
        terminal's keyboard)."""
        paths = RunPaths(cfg.run_dir)
        _record_demos(cfg, paths)
        _train_start(cfg, paths)
        _, model, normalizer, start_params, _ = load_run(paths.start)
        if cfg.indicator != "prompt":
            # one model for every method: the baselines never set the indicator input
            model = PolicyModel(
                dataclasses.replace(
                    model.cfg,
                    indicator=True,
                    indicator_modulation=cfg.indicator == "modulation",
                )
            )
            start_params = model.with_indicator(start_params)
        vf = ValueFunction(model.cfg, cfg.value)
        from anyskill import envs

        env = envs.make(cfg.env, image_size=model.cfg.image_size)
        deployment = Deployment(cfg, env, model, normalizer, vf, human)
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


def _record_demos(c: FlywheelConfig, paths: RunPaths) -> None:
    from anyskill.data.record import record_expert

    have = Dataset.open(paths.data).num_episodes if (paths.data / "meta").exists() else 0
    if have < c.demos:
        log(f"recording {c.demos - have} scripted demonstrations of {c.env} ...")
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
