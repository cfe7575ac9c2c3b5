"""Multi-task training of the VLA (or a baseline) from an episode store.

AdamW with linear warmup + cosine decay, global-norm gradient clipping, EMA weights (used
for evaluation and deployment), atomic checkpoints with resume, a progress bar, periodic
closed-loop evaluation in the simulator (success per task family, seen and held-out),
``metrics.jsonl`` and ``curves.png``.

At every evaluation the metrics row is appended (fsynced) *before* the checkpoint is
written; a resume drops rows newer than the checkpoint and a torn last line, and training
runs again from the checkpoint's step (see :mod:`anyskill.rundir`). ``--resume`` takes the
whole config, ``--data`` included, from the run's strict ``config.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from anyskill import checkpoint, rundir
from anyskill.algos.vla.config import ModelConfig, TrainConfig
from anyskill.algos.vla.data import Normalizer, TrainingData, model_for_dataset
from anyskill.algos.vla.evaluate import ChunkFnPolicy, Evaluator
from anyskill.algos.vla.model import Obs, PolicyModel
from anyskill.learn import train_steps

CKPT = "checkpoint.msgpack"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


@struct.dataclass
class TrainState:
    params: dict
    ema: dict
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(1, cfg.warmup_steps), max(cfg.steps, cfg.warmup_steps + 1), cfg.lr * 0.05
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def ema_decay(ema: float, step):
    """EMA decay at update ``step`` (0-based): ``min(ema, (1 + step) / (10 + step))``.

    The warm-up (as in TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps the
    average from holding on to the initial weights: with a constant 0.999, 37 % of the EMA
    is still the random initialisation after 1,000 steps, which makes short runs and early
    evaluations look far worse than the weights being trained."""
    return jnp.minimum(ema, (1.0 + step) / (10.0 + step))


def make_train_step(model: PolicyModel, opt: optax.GradientTransformation, ema: float):
    @jax.jit
    def train_step(ts: TrainState, batch):
        key, k = jax.random.split(ts.key)
        (loss, metrics), grads = jax.value_and_grad(model.loss, has_aux=True)(ts.params, k, batch)
        updates, opt_state = opt.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        d = ema_decay(ema, ts.step.astype(jnp.float32))
        new_ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ts.ema, params)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return TrainState(params, new_ema, opt_state, ts.step + 1, key), metrics

    return train_step


def chunk_fn_for(model: PolicyModel, normalizer: Normalizer, num_steps: int | None = None):
    """``chunk_fn(params, key, obs_with_raw_state) -> [B, H, A]`` actions in env units."""

    def chunk_fn(params, key, obs: Obs):
        obs = obs.replace(state=normalizer.state(obs.state))
        return normalizer.unaction(model.sample(params, key, obs, num_steps))

    return chunk_fn


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"policy-{cfg.model.arch}-s{cfg.seed}"


def source_env(data_root: Path) -> dict | None:
    from anyskill.data.writer import load_source_env

    return load_source_env(data_root)


def make_eval_env(src: dict | None, image_size: int):
    """The built-in env a dataset was recorded from (None if it was not)."""
    if not src or not str(src.get("env", "")).startswith("tabletop"):
        return None
    from anyskill import envs

    return envs.make(src["env"], image_size=image_size)


def _config_to_json(cfg: TrainConfig) -> dict:
    return rundir.config_to_json(cfg)


def config_from_json(d: dict, source: Path | str = CONFIG) -> TrainConfig:
    """A :class:`TrainConfig` from its JSON form, strictly (see :mod:`anyskill.rundir`)."""
    return rundir.config_from_json(TrainConfig, d, source)


def load_config(run_dir: Path) -> TrainConfig:
    """The config a policy run was trained with; a missing field, an unknown key or a wrong
    type is refused in one line naming ``RUN/config.json``."""
    return rundir.load_config(TrainConfig, Path(run_dir) / CONFIG)


def load_run(run_dir: Path):
    """``(cfg, model, normalizer, ema_params, meta)`` of a trained run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists() or not (run_dir / CKPT).exists():
        raise checkpoint.CheckpointError(
            f"{run_dir} is not a policy run (needs config.json and {CKPT}); "
            "train one with `anyskill train policy --data PATH --run-dir DIR`"
        )
    cfg = load_config(run_dir)
    model = PolicyModel(cfg.model)
    # templates of shapes only: real initial weights would compile every initialiser op
    # eagerly (~15 s of CPU for a tiny VLA) just to be overwritten by the checkpoint
    params = jax.eval_shape(model.init, jax.random.key(0))
    opt = make_optimizer(cfg)
    ts = jax.eval_shape(
        lambda p: TrainState(p, p, opt.init(p), jnp.int32(0), jax.random.PRNGKey(0)), params
    )
    template = {"train": ts, "ema": params, "normalizer": _normalizer_template(cfg.model)}
    tree, meta = checkpoint.load(run_dir / CKPT, template)
    return cfg, model, tree["normalizer"], tree["ema"], meta


def _normalizer_template(m: ModelConfig) -> Normalizer:
    z = jnp.zeros
    return Normalizer(z(m.state_dim), z(m.state_dim), z(m.action_dim), z(m.action_dim))


def train(cfg: TrainConfig, log=print) -> dict:
    """Train (or resume) a policy run; returns the last evaluation."""
    from anyskill.data.reader import Dataset

    run_dir = Path(cfg.run_dir or default_run_dir(cfg))
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    if cfg.resume:
        if not (run_dir / CKPT).exists():
            raise ValueError(f"--resume: {run_dir} has no {CKPT} to resume from")
        saved = load_config(run_dir)
        if cfg.data and _resolved(cfg.data) != _resolved(saved.data):
            raise ValueError(
                f"--resume: {run_dir} was trained on --data "
                f"{' '.join(str(p) for p in saved.data)}, not {' '.join(str(p) for p in cfg.data)}"
                "; leave out --data to continue on the run's own data, or train the other data "
                "in a new --run-dir"
            )
        cfg = dataclasses.replace(saved, run_dir=run_dir, resume=True, progress=cfg.progress)
    elif (run_dir / CKPT).exists():
        raise ValueError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another "
            "--run-dir (nothing was overwritten)"
        )
    if len(cfg.data) != 1:
        raise ValueError(
            f"--data takes exactly one episode store, got {len(cfg.data)}; combine several "
            "with `anyskill data merge A B --out C` first"
        )
    ds = Dataset.open(cfg.data[0])
    src = source_env(ds.root)
    # A new run's inputs and outputs are the LeRobot features its data declares (any robot);
    # a resumed run keeps its own, and TrainingData.build refuses data that no longer
    # matches them (one error naming the feature) before anything compiles.
    if cfg.resume:
        m = cfg.model
    else:
        m = model_for_dataset(cfg.model, ds, make_eval_env(src, cfg.model.image_size))
    cfg = dataclasses.replace(cfg, model=m)
    model = PolicyModel(m)
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / CONFIG, rundir.config_to_json(cfg), indent=2)

    what = "camera frames" if m.num_cameras else "frames"
    log(f"loading {ds.num_episodes} episodes' {what} ({ds.num_frames} frames) ...")
    data = TrainingData.build(ds, m, cfg.batch_size, cfg.seed)
    opt = make_optimizer(cfg)
    key = jax.random.PRNGKey(cfg.seed)  # raw uint32 key: checkpointable
    params = model.init(key)
    ts = TrainState(params, params, opt.init(params), jnp.int32(0), jax.random.fold_in(key, 1))
    history: list[dict] = []
    trained = 0.0  # seconds spent in training steps, over every session (see time_budget_min)
    if cfg.resume:
        tree, meta = checkpoint.load(
            run_dir / CKPT, {"train": ts, "ema": params, "normalizer": data.normalizer}
        )
        ts = tree["train"]
        trained = float(meta.get("train_seconds", 0.0))
        # rows newer than the checkpoint (killed between the row and the checkpoint) and a
        # torn last line are dropped: this run writes them again
        history = rundir.resume_metrics(run_dir / METRICS, "step", int(ts.step))
        if "batch_rng" in meta:  # the exact batch stream (bit-for-bit resume)
            data.set_rng_state(meta["batch_rng"])
        else:  # a checkpoint from before the stream was saved
            data.sampler.rng = np.random.default_rng(cfg.seed + int(ts.step))
        log(f"resumed at step {int(ts.step)}")
    else:
        checkpoint.atomic_write_bytes(run_dir / METRICS, b"")  # no rows of an unfinished run
    n_params = sum(x.size for x in jax.tree.leaves(params))
    log(
        f"{m.arch}: {n_params / 1e6:.2f}M parameters; {ds.num_frames} frames, {len(ds.tasks)} tasks"
    )
    train_step = make_train_step(model, opt, cfg.ema)

    env = make_eval_env(src, m.image_size)
    evaluator = None
    if env is not None and cfg.eval_episodes > 0:
        evaluator = Evaluator(env, cfg.eval_split, cfg.eval_episodes, cfg.replan_every)
        # the policy being trained; each evaluation swaps in the current EMA weights
        selector = None
        if m.subtasks:  # evaluated hierarchically: predicted subtasks, default hysteresis
            from anyskill.algos.vla.subtasks import SubtaskSelector

            selector = SubtaskSelector(model, data.normalizer, "predicted")
        eval_policy = ChunkFnPolicy(
            chunk_fn_for(model, data.normalizer), params, m, selector=selector
        )

    def evaluate(step: int) -> dict:
        if evaluator is None:
            return {}
        return evaluator(eval_policy.with_params(ts.ema), jax.random.key(10_000 + step))

    def save(metrics_row: dict):
        # the row first (one fsynced append), then the checkpoint: a kill between the two
        # leaves a row newer than the checkpoint, which a resume drops and writes again
        history.append(metrics_row)
        rundir.append_metrics(run_dir / METRICS, metrics_row)
        tree = {"train": ts, "ema": ts.ema, "normalizer": data.normalizer}
        meta = {
            "step": int(ts.step),
            "arch": m.arch,
            "train_seconds": trained,
            "batch_rng": data.rng_state(),
        }
        checkpoint.save(run_dir / CKPT, tree, meta)
        plot_curves(history, run_dir / "curves.png")

    from tqdm.auto import tqdm

    start = int(ts.step)
    if cfg.time_budget_min and trained > cfg.time_budget_min * 60:
        log(f"the time budget of {cfg.time_budget_min} min was used up before step {start}")
        return {"step": start}
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress, unit="step")
    losses = []
    sub_metrics: dict[str, list] = {}  # the subtask head's loss and accuracy (subtasks=True)
    last = {}
    step = start
    # Training time (time_budget_min) runs from the end of this session's first step (which
    # compiles) and is paused around evaluation, checkpoint and plot.
    session_start, t_mark = trained, None
    updates = train_steps(train_step, ts, data.batch, cfg.steps, start=start, progress=bar.update)
    for step, ts, metrics in updates:  # noqa: B007 (evaluate() and save() read ts)
        losses.append(metrics["loss"])
        for k in ("flow_loss", "subtask_loss", "subtask_acc"):
            if k in metrics:
                sub_metrics.setdefault(k, []).append(metrics[k])
        at_eval = cfg.eval_every and step % cfg.eval_every == 0
        if t_mark is None or at_eval or step == cfg.steps:
            jax.block_until_ready(metrics["loss"])  # dispatched steps are finished steps
        now = time.perf_counter()
        if t_mark is not None:
            trained += now - t_mark
        t_mark = now
        out_of_time = cfg.time_budget_min and trained > cfg.time_budget_min * 60
        if at_eval or step == cfg.steps or out_of_time:
            loss = float(np.mean(np.asarray(jnp.stack(losses))))
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss} at step {step}; the last checkpoint is kept"
                )
            losses = []
            t_eval = time.perf_counter()
            last = evaluate(step)
            eval_s = time.perf_counter() - t_eval
            counted = step - start - 1  # this session's steps after its compiling one
            row = {
                "step": step,
                "train_seconds": round(trained, 1),
                "loss": loss,
                "samples_per_s": round(
                    cfg.batch_size * counted / max(trained - session_start, 1e-9), 1
                ),
                "eval_seconds": round(eval_s, 1),
                **{
                    f"train_{k}": float(np.mean(np.asarray(jnp.stack(v))))
                    for k, v in sub_metrics.items()
                },
                **last,
            }
            sub_metrics = {}
            save(row)
            t_mark = time.perf_counter()
            bar.set_postfix(
                loss=f"{loss:.3f}", **{k: f"{v:.2f}" for k, v in last.items() if k.endswith("mean")}
            )
            if out_of_time:
                log(f"time budget of {cfg.time_budget_min} min reached at step {step}")
                break
    bar.close()
    return {"step": step, **last}


def _resolved(paths) -> list[Path]:
    return [Path(p).resolve() for p in paths]


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(steps, [h["loss"] for h in history])
    axes[0].set(xlabel="gradient step", ylabel="training loss", yscale="log")
    keys = sorted({k for h in history for k in h if "/" in k and not k.endswith("mean")})
    for k in keys:
        axes[1].plot(steps, [h.get(k, np.nan) for h in history], label=k, marker=".")
    axes[1].set(xlabel="gradient step", ylabel="success", ylim=(-0.02, 1.02))
    if keys:
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
