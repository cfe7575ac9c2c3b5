"""Driving a CRL run on disk: config, metrics, checkpoints, plots, videos, resume.

A run directory holds:

    config.json        the CRLConfig (a run resumes with exactly this config)
    metrics.jsonl      one line per epoch: env steps, wall time, losses, success_any, time_at_goal
    checkpoint.msgpack the full training state (networks, optimisers, envs, replay buffer),
                       written atomically after every evaluation
    curves.png         learning curves
    rollouts.gif       evaluation episodes drawn on the maze (``anyskill eval``)

Python here only logs, checkpoints and draws progress; the work is in jitted functions.

Several processes (``--coordinator``, ``--num-processes``, ``--process-id``; see
:mod:`anyskill.distributed`) train one run together: each runs this same code, and only
process 0 reads and writes the run directory; the others receive the config, metrics and
checkpoint it read, so the hosts need no shared file system.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np

from anyskill import checkpoint, distributed, rundir
from anyskill.algos.crl.config import CRLConfig
from anyskill.algos.crl.train import CRLTrainer, make_train
from anyskill.rundir import RunError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.msgpack"
CURVES_FILE = "curves.png"


class NonFiniteLoss(RuntimeError):
    pass


def is_run(run_dir: Path) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file()


def load_config(run_dir: Path) -> CRLConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); "
            f"create one with `anyskill train crl --run-dir {run_dir}`"
        )
    return rundir.load_config(CRLConfig, path)  # strict: a missing field is refused


def _to_python(metrics: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def train_run(
    config: CRLConfig,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    log=print,
) -> list[dict]:
    """Train (or resume) a run in ``run_dir``; returns all epochs' metrics.

    With ``config.distributed`` set, every process of the job calls this with the same
    config: they train as one program, and only process 0 reads and writes ``run_dir`` (the
    others get what it read from it, so the hosts need no shared file system)."""
    distributed.initialize(config.distributed)  # before anything starts JAX's devices
    run_dir = Path(run_dir)
    lead = distributed.is_leader()
    if resume:
        saved = distributed.from_leader(lambda: rundir.config_to_json(load_config(run_dir)))
        # the deployment is this launch's, whatever the run was started with
        config = dataclasses.replace(
            rundir.config_from_json(CRLConfig, saved, run_dir / CONFIG_FILE),
            distributed=config.distributed,
        )
    else:
        distributed.from_leader(lambda: _refuse_existing_run(run_dir))
    trainer = make_train(config)  # validates devices before any compilation
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
    key = jax.random.PRNGKey(config.seed)
    k_state, k_eval = jax.random.split(key)

    # built sharded: the env axis is split over the devices (of every process) from the start
    shapes = jax.eval_shape(trainer.init_state, k_state)
    shardings = trainer.state_sharding(shapes)
    init = jax.jit(trainer.init_state, out_shardings=shardings)
    state = init(trainer.replicated(k_state))
    start_epoch, history, wall_offset = 0, [], 0.0
    ckpt_path = run_dir / CHECKPOINT_FILE
    if resume:
        template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
        loaded = {"state": template}  # process 0 replaces it with the checkpoint's state

        def read_checkpoint() -> dict | None:
            found = _read_checkpoint(run_dir, template)
            if found is not None:
                loaded["state"] = found.pop("state")
            return found

        found = distributed.from_leader(read_checkpoint)
    else:
        found = None
    if found is not None:
        state = jax.device_put(distributed.broadcast_from_leader(loaded["state"]), shardings)
        start_epoch = found["epoch"] + 1
        history = found["history"]
        wall_offset = history[-1]["wall_time"] if history else 0.0
        if lead:
            log(
                f"resuming {run_dir} after epoch {start_epoch - 1} "
                f"({int(state.env_steps)} env steps)"
            )
    else:
        if lead:
            rundir.write_json(run_dir / CONFIG_FILE, rundir.config_to_json(config), indent=2)
            checkpoint.atomic_write_bytes(run_dir / METRICS_FILE, b"")
        state = jax.jit(trainer.prefill, donate_argnums=0, out_shardings=shardings)(state)

    train_epoch = jax.jit(trainer.train_epoch, donate_argnums=0, out_shardings=(shardings, None))
    evaluate = jax.jit(trainer.evaluate)

    bar = None
    if progress and lead:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.prefill_steps + config.num_epochs * config.env_steps_per_epoch,
            initial=int(state.env_steps),
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            desc=f"crl {config.env} d{config.critic_depth}",
        )
    t0 = time.time()
    try:
        for epoch in range(start_epoch, config.num_epochs):
            steps_before = int(state.env_steps)
            t_epoch = time.time()
            state, train_metrics = train_epoch(state)
            k_epoch = trainer.replicated(jax.random.fold_in(k_eval, epoch))
            eval_metrics = evaluate(state.params, k_epoch)
            row = {
                "epoch": epoch,
                "env_steps": int(state.env_steps),
                "grad_steps": int(state.grad_steps),
                "wall_time": wall_offset + time.time() - t0,
                "env_steps_per_s": (int(state.env_steps) - steps_before) / (time.time() - t_epoch),
                **_to_python(train_metrics),
                **_to_python(eval_metrics),
            }
            # every process computes the same losses, so all of them stop here together
            bad = [
                k for k in ("critic_loss", "actor_loss", "alpha_loss") if not math.isfinite(row[k])
            ]
            if bad:
                raise NonFiniteLoss(
                    f"non-finite {', '.join(f'{k}={row[k]}' for k in bad)} at epoch {epoch}; "
                    f"stopped. The last good checkpoint ({len(history)} epochs) is kept in "
                    f"{ckpt_path}. Try a lower --learning-rate or a different --seed."
                )
            history.append(row)
            host_state = distributed.to_host(state)  # a collective: every process gathers
            if not lead:
                continue
            # the row first, then the checkpoint: a kill between them leaves a row newer than
            # the checkpoint, which a resume drops and writes again (never a lost row)
            rundir.append_metrics(run_dir / METRICS_FILE, row)
            checkpoint.save(
                ckpt_path,
                host_state,
                {
                    "epoch": epoch,
                    "env_steps": row["env_steps"],
                    "config": dataclasses.asdict(config),
                },
            )
            plot_curves(history, run_dir / CURVES_FILE, title=f"CRL on {config.env}")
            if bar is not None:
                bar.update(row["env_steps"] - bar.n)
                bar.set_postfix(
                    success=f"{row['success_any']:.2f}",
                    at_goal=f"{row['time_at_goal']:.1f}",
                    sps=f"{row['env_steps_per_s']:.0f}",
                )
            else:
                log(
                    f"epoch {epoch}: {row['env_steps']} steps  success_any={row['success_any']:.3f}"
                    f"  time_at_goal={row['time_at_goal']:.1f}  critic_loss={row['critic_loss']:.3f}"
                )
    finally:
        if bar is not None:
            bar.close()
    return history


def _refuse_existing_run(run_dir: Path) -> None:
    if is_run(run_dir):
        raise RunError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another "
            f"--run-dir (nothing was overwritten)"
        )


def _read_checkpoint(run_dir: Path, template) -> dict | None:
    """What a resume needs from ``run_dir`` (process 0 reads it): the state of the last
    checkpoint, its epoch and the metrics rows up to it; None when there is no checkpoint."""
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        return None
    state, meta = checkpoint.load(ckpt_path, template)
    # the template's dtypes, which every process's copy of the broadcast must share
    state = jax.tree.map(lambda x, t: np.asarray(x, t.dtype), state, template)
    epoch = int(meta["epoch"])
    # rows of epochs after the checkpoint's (a kill between the row and the checkpoint)
    # and a torn last line are dropped: this run writes them again
    history = rundir.resume_metrics(run_dir / METRICS_FILE, "epoch", epoch)
    return {"state": state, "epoch": epoch, "history": history}


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["env_steps"] for r in history]
    panels = [
        ("success_any", "success (any step at goal)"),
        ("time_at_goal", "steps at goal per episode"),
        ("critic_loss", "critic loss"),
        ("categorical_accuracy", "contrastive accuracy"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(steps, [r.get(key, np.nan) for r in history], marker="o", ms=3)
        ax.set_xlabel("env steps")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def load_trained(run_dir: Path) -> tuple[CRLTrainer, object, dict]:
    """The trainer and parameters of a run's latest checkpoint."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    if not ckpt_path.is_file():
        raise RunError(
            f"{run_dir} has no checkpoint yet ({CHECKPOINT_FILE}); it is saved after the first "
            f"evaluation — resume the run with `anyskill train crl --run-dir {run_dir} --resume`"
        )
    # a loaded policy acts in this process, on its own devices (even inside a multi-process job)
    trainer = make_train(config, devices=jax.local_devices())
    template = jax.eval_shape(trainer.init_state, jax.random.PRNGKey(0))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    state, meta = checkpoint.load(ckpt_path, template)
    return trainer, state, meta


def eval_run(
    run_dir: Path,
    num_episodes: int = 256,
    video: Path | None = None,
    video_episodes: int = 8,
    seed: int = 12345,
    fps: int = 20,
) -> dict:
    """Evaluate a run's latest checkpoint on fresh goals; optionally write a rollout video."""
    if num_episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {num_episodes}")
    if not distributed.is_leader():
        # after a multi-process `anyskill train crl`: process 0 evaluates (on its own devices)
        # and writes the video; the others must not race on the same files
        return {"run_dir": str(run_dir), "video": None, "evaluated_by": "process 0"}
    trainer, state, meta = load_trained(run_dir)
    d = len(jax.local_devices())
    num_episodes = max(d, num_episodes // d * d)
    key = jax.random.PRNGKey(seed)
    success, positions, goals = jax.jit(trainer.rollout, static_argnums=2)(
        state.params, key, num_episodes
    )
    success = np.asarray(success)
    result = {
        "run_dir": str(run_dir),
        "env": trainer.eval_env.name,
        "epoch": int(meta["epoch"]),
        "env_steps": int(meta["env_steps"]),
        "episodes": num_episodes,
        "success_any": float(success.any(axis=0).mean()),
        "time_at_goal": float(success.sum(axis=0).mean()),
        "final_success": float(success[-1].mean()),
    }
    if video is not None:
        from anyskill.envs.render import render_maze_frames, save_video, tile_frames

        positions, goals = np.asarray(positions), np.asarray(goals)
        n = min(video_episodes, num_episodes)
        clips = [render_maze_frames(trainer.eval_env, positions[:, i], goals[i]) for i in range(n)]
        save_video(tile_frames(clips, cols=min(4, n)), video, fps=fps)
        result["video"] = str(video)
    return result
