"""Deep teacher -> shallow student: distil a trained CRL run into smaller networks (issue 28).

The 1000-layer paper (Wang et al. 2025, "Future work") names distillation as the way to pay
for depth only at training time. From a teacher run's checkpoint this trains a student with
a shallower and/or narrower critic and actor on (state, goal) pairs of the teacher's replay
buffer, and saves it as an ordinary CRL run directory, so ``anyskill eval``, ``CRLPolicy``,
the server and the planner load the student like any other run.

Pairs. Rows (s, a) are sampled from the buffer; each row's goal is, with probability
``1 - random_goal_fraction``, a future state of its own trajectory (CRL's relabeling:
Δ ~ truncated geometric in the discount) and otherwise a uniformly random buffer state (far
goals, as the evaluation asks for). Trajectories of the last ``heldout_fraction`` of the env
columns are never trained on; held-out metrics are measured there.

Actor: MSE on the deterministic action, ``||tanh(mu_S(s,g)) - tanh(mu_T(s,g))||^2``, plus a
small MSE on the log-std. Why not the KL between the two policies: the tanh-Gaussian KL has
no closed form, and the pre-tanh Gaussian KL weights the mean's error by 1/sigma_T^2, which
is huge for a trained, nearly deterministic actor and for saturated means whose tanh no
longer moves — it would spend capacity on pre-tanh differences the environment never sees.
The deployed action (``anyskill eval``, ``CRLPolicy``) is exactly ``tanh(mu)``.

Critic: regression of the teacher's logits f_T(s_i, a_i, g_j) (= -||phi_T - psi_T|| for the
l2 energy: the distance) over **all B x B pairs** of the batch — B^2 targets per batch for one
matmul, so every row also sees B - 1 other rows' goals — plus the KL between the teacher's
and the student's forward InfoNCE softmax over each row's goals. The regression keeps the
distance's absolute scale, which the planner's cutoff and waypoint radius depend on; the KL
matches its ranking among nearby goals, where a squared error on the absolute value is
dominated by the large far distances (the teacher's distance is only informative up to a
floor, see BENCHMARKS.md "Search before acting").

The training loop is ``lax.scan`` over steps inside one ``jit``; Python draws the progress
bar between chunks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from flax import struct

from anyskill import checkpoint, rundir
from anyskill.algos.crl import losses
from anyskill.algos.crl import run as crl_run
from anyskill.algos.crl.config import CRLConfig
from anyskill.algos.crl.train import CRLParams, CRLTrainer, make_train
from anyskill.data.replay import ReplayBuffer
from anyskill.nets.residual import check_depth
from anyskill.rundir import RunError

DISTILL_FILE = "distill.json"


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """The student's networks; 0 = the teacher's value."""

    critic_depth: int = 4
    """Dense layers inside residual blocks of each critic encoder (multiple of 4; 0 = one
    hidden layer, no residual block). At most the teacher's."""
    actor_depth: int = 4
    """Dense layers inside residual blocks of the actor (multiple of 4). At most the
    teacher's."""
    critic_width: int = 0
    """Hidden width of the critic encoders (0 = the teacher's). At most the teacher's."""
    actor_width: int = 0
    """Hidden width of the actor (0 = the teacher's). At most the teacher's."""

    def __post_init__(self):
        check_depth(self.critic_depth, "student.critic_depth")
        check_depth(self.actor_depth, "student.actor_depth")
        for name in ("critic_width", "actor_width"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"student.{name} must be >= 0 (0 = the teacher's), got {getattr(self, name)}"
                )


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Distil a trained CRL run (the teacher) into a smaller student."""

    student: StudentConfig = StudentConfig()
    """The student's networks."""
    steps: int = 10_000
    """Gradient steps (critic and actor each take one per step)."""
    batch_size: int = 256
    """Rows per step; the critic regresses all batch_size^2 (row, goal) pairs."""
    learning_rate: float = 1e-3
    """Adam's initial learning rate (cosine decay to 0 over --steps)."""
    random_goal_fraction: float = 0.5
    """Rows whose goal is a random buffer state instead of a future state of their own
    trajectory."""
    kl_weight: float = 1.0
    """Weight of the KL between the teacher's and the student's softmax over each row's goals
    (0 = distance regression only)."""
    log_std_weight: float = 0.1
    """Weight of the actor's log-std regression (0 = the deterministic action only)."""
    heldout_fraction: float = 0.125
    """Env columns of the buffer (whole trajectories) kept out of training for the held-out
    metrics."""
    eval_batches: int = 8
    """Held-out batches for the metrics."""
    eval_episodes: int = 128
    """Evaluation episodes for teacher and student (the same starts and goals); 0 = skip."""
    log_every: int = 500
    """Steps per jitted chunk (one progress-bar update)."""
    seed: int = 0
    """Seed of the student's initialisation and the sampling."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "learning_rate", "eval_batches", "log_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("random_goal_fraction", "heldout_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("kl_weight", "log_std_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(
                    f"{name} must be >= 0 (0 turns the term off), got {getattr(self, name)}"
                )
        if self.eval_episodes < 0:
            raise ValueError(f"eval_episodes must be >= 0, got {self.eval_episodes}")


@dataclasses.dataclass(frozen=True)
class DistillCRL:
    """Distil a trained CRL run (the teacher) into a shallower/narrower student, saved as an
    ordinary CRL run directory (`anyskill eval STUDENT`, `--plan`, `anyskill serve STUDENT`).

    The actor regresses the teacher's deterministic action tanh(mu); the critic regresses
    the teacher's distance over all pairs of each batch and matches its softmax over goals."""

    teacher: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="TEACHER_RUN")]]
    """A run directory written by `anyskill train crl` (its latest checkpoint is the teacher)."""
    run_dir: Path
    """The student's new run directory (refused if it already holds a run)."""
    config: Annotated[DistillConfig, tyro.conf.arg(name="")] = DistillConfig()
    progress: bool = True
    """Show a progress bar (otherwise one log line per chunk of --log-every steps)."""


def student_config(teacher: CRLConfig, student: StudentConfig) -> CRLConfig:
    """The teacher's CRLConfig with the student's networks. Refuses a student larger than its
    teacher in any dimension: that is not distillation (train it with `anyskill train crl`)."""
    fields = {
        "critic_depth": student.critic_depth,
        "actor_depth": student.actor_depth,
        "critic_width": student.critic_width or teacher.critic_width,
        "actor_width": student.actor_width or teacher.actor_width,
    }
    bigger = [
        f"student.{k}={v} > teacher's {getattr(teacher, k)}"
        for k, v in fields.items()
        if v > getattr(teacher, k)
    ]
    if bigger:
        raise ValueError(
            f"the student must not be larger than its teacher: {'; '.join(bigger)}; "
            f"lower these --student.* flags, or train a bigger network with `anyskill train crl`"
        )
    return dataclasses.replace(teacher, **fields)


# ---------------------------------------------------------------------- cost of an action


def actor_macs(obs_dim: int, goal_dim: int, action_dim: int, width: int, depth: int) -> int:
    """Multiply-adds of one forward pass of the actor (one action): the input Dense
    ``(obs+goal) x width``, ``depth`` residual Dense ``width x width`` and the head
    ``width x 2*action_dim`` (mean and log-std). LayerNorm, swish, residual adds and biases
    (O(width) per layer, < 3 % here) are not counted."""
    return (obs_dim + goal_dim) * width + depth * width * width + width * 2 * action_dim


# ---------------------------------------------------------------------------- the pairs


@struct.dataclass
class Pairs:
    """obs [B, obs_dim], action [B, A] (the buffer's), goal [B, goal_dim]."""

    obs: jax.Array
    action: jax.Array
    goal: jax.Array


def split_columns(
    buffer: ReplayBuffer, heldout_fraction: float
) -> tuple[ReplayBuffer, ReplayBuffer]:
    """(train, held-out) buffers: whole env columns (trajectories), the last ones held out."""
    num_envs = buffer.data.t.shape[1]
    n_held = max(1, int(round(num_envs * heldout_fraction))) if heldout_fraction > 0 else 0
    if n_held >= num_envs:
        raise ValueError(
            f"heldout_fraction={heldout_fraction} leaves no training trajectories of "
            f"{num_envs} env columns; lower --heldout-fraction"
        )
    cut = num_envs - n_held

    def cols(lo: int, hi: int) -> ReplayBuffer:
        return buffer.replace(data=jax.tree.map(lambda x: x[:, lo:hi], buffer.data))

    return cols(0, cut), cols(cut if n_held else 0, num_envs)


def sample_pairs(
    trainer: CRLTrainer, buffer: ReplayBuffer, key: jax.Array, batch_size: int, random_frac: float
) -> Pairs:
    """Rows of the buffer with CRL's future-state goals, a fraction replaced by random states."""
    k_future, k_random, k_pick = jax.random.split(key, 3)
    env = trainer.env
    rows, future, _ = buffer.sample_with_future(
        k_future, batch_size, env.episode_length, trainer.config.discount
    )
    other, _, _ = buffer.sample_with_future(k_random, batch_size, env.episode_length, 0.5)
    use_random = jax.random.uniform(k_pick, (batch_size, 1)) < random_frac
    goal = jnp.where(use_random, env.achieved_goal(other.obs), env.achieved_goal(future.obs))
    return Pairs(obs=rows.obs, action=rows.action, goal=goal)


# --------------------------------------------------------------------------- the losses


def logits(trainer: CRLTrainer, critic_params, pairs: Pairs) -> jax.Array:
    """f(s_i, a_i, g_j) for all pairs of the batch: [B, B] (-distance for the l2 energy)."""
    phi, psi = trainer.critic.apply({"params": critic_params}, pairs.obs, pairs.action, pairs.goal)
    return losses.pairwise_energy(trainer.config.energy, phi, psi)


def critic_distill_loss(
    f_student: jax.Array, f_teacher: jax.Array, kl_weight: float
) -> tuple[jax.Array, dict]:
    """mean_ij (f_S - f_T)^2 + kl_weight * mean_i KL(softmax_j f_T[i] || softmax_j f_S[i])."""
    mse = jnp.mean((f_student - f_teacher) ** 2)
    log_p_t = jax.nn.log_softmax(f_teacher, axis=1)
    log_p_s = jax.nn.log_softmax(f_student, axis=1)
    kl = jnp.mean(jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=1))
    return mse + kl_weight * kl, {"critic_mse": mse, "critic_kl": kl}


def actor_distill_loss(
    mean_s, log_std_s, mean_t, log_std_t, log_std_weight: float
) -> tuple[jax.Array, dict]:
    """mean ||tanh(mu_S) - tanh(mu_T)||^2 + log_std_weight * mean (log_std_S - log_std_T)^2."""
    action_mse = jnp.mean(jnp.sum((jnp.tanh(mean_s) - jnp.tanh(mean_t)) ** 2, axis=-1))
    log_std_mse = jnp.mean(jnp.sum((log_std_s - log_std_t) ** 2, axis=-1))
    return action_mse + log_std_weight * log_std_mse, {
        "action_mse": action_mse,
        "log_std_mse": log_std_mse,
    }


# ---------------------------------------------------------------------------- training


@struct.dataclass
class DistillState:
    critic: Any
    actor: Any
    opt_critic: Any
    opt_actor: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Distiller:
    """Pure pieces of a distillation: ``init(key)``, ``train_chunk(state, teacher_params,
    buffer, key)`` (``log_every`` steps in one ``lax.scan``) and ``heldout_metrics``."""

    config: DistillConfig
    teacher: CRLTrainer
    student: CRLTrainer
    optimizer: optax.GradientTransformation

    def init(self, key: jax.Array) -> DistillState:
        params = self.student.init_params(key)
        return DistillState(
            critic=params.critic,
            actor=params.actor,
            opt_critic=self.optimizer.init(params.critic),
            opt_actor=self.optimizer.init(params.actor),
            step=jnp.asarray(0, jnp.int32),
        )

    def loss(self, student, teacher_params: CRLParams, pairs: Pairs):
        """(critic loss + actor loss, metrics); ``student`` = (critic params, actor params).
        The two networks share no parameters, so one gradient of the sum trains both."""
        critic_s, actor_s = student
        f_t = logits(self.teacher, teacher_params.critic, pairs)
        f_s = logits(self.student, critic_s, pairs)
        c_loss, c_metrics = critic_distill_loss(f_s, f_t, self.config.kl_weight)
        mean_t, log_std_t = self.teacher.actor.apply(
            {"params": teacher_params.actor}, pairs.obs, pairs.goal
        )
        mean_s, log_std_s = self.student.actor.apply({"params": actor_s}, pairs.obs, pairs.goal)
        a_loss, a_metrics = actor_distill_loss(
            mean_s, log_std_s, mean_t, log_std_t, self.config.log_std_weight
        )
        return c_loss + a_loss, {**c_metrics, **a_metrics}

    def step(self, state: DistillState, teacher_params, buffer, key):
        c = self.config
        pairs = sample_pairs(self.teacher, buffer, key, c.batch_size, c.random_goal_fraction)
        teacher_params = jax.lax.stop_gradient(teacher_params)
        grads, metrics = jax.grad(self.loss, has_aux=True)(
            (state.critic, state.actor), teacher_params, pairs
        )
        upd_c, opt_c = self.optimizer.update(grads[0], state.opt_critic, state.critic)
        upd_a, opt_a = self.optimizer.update(grads[1], state.opt_actor, state.actor)
        new = DistillState(
            critic=optax.apply_updates(state.critic, upd_c),
            actor=optax.apply_updates(state.actor, upd_a),
            opt_critic=opt_c,
            opt_actor=opt_a,
            step=state.step + 1,
        )
        return new, metrics

    def train_chunk(self, state: DistillState, teacher_params, buffer, key, length: int):
        def body(s, k):
            return self.step(s, teacher_params, buffer, k)

        keys = jax.random.split(jax.random.fold_in(key, state.step), length)
        state, metrics = jax.lax.scan(body, state, keys)
        return state, jax.tree.map(jnp.mean, metrics)

    def heldout_pairs(self, buffer: ReplayBuffer, key: jax.Array) -> Pairs:
        c = self.config
        keys = jax.random.split(key, c.eval_batches)
        return jax.vmap(
            lambda k: sample_pairs(self.teacher, buffer, k, c.batch_size, c.random_goal_fraction)
        )(keys)

    def predictions(self, critic, actor, teacher_params, pairs: Pairs) -> dict:
        """Teacher's and student's distances ([n, B, B]) and actions on stacked batches."""

        def one(p: Pairs):
            return {
                "f_teacher": logits(self.teacher, teacher_params.critic, p),
                "f_student": logits(self.student, critic, p),
                "a_teacher": self.teacher.act(teacher_params, None, p.obs, p.goal, True),
                "a_student": self.student.act(
                    CRLParams(actor, critic, jnp.zeros(())), None, p.obs, p.goal, True
                ),
            }

        return jax.vmap(one)(pairs)


def heldout_report(pred: dict) -> dict:
    """Distance error and rank agreement of the student with the teacher (host side)."""
    from scipy.stats import spearmanr

    f_t = np.asarray(pred["f_teacher"], np.float64).ravel()
    f_s = np.asarray(pred["f_student"], np.float64).ravel()
    a_t, a_s = np.asarray(pred["a_teacher"]), np.asarray(pred["a_student"])
    # per row of goals too: does the student order one state's goals like the teacher?
    ft3, fs3 = np.asarray(pred["f_teacher"]), np.asarray(pred["f_student"])
    rows_t = ft3.reshape(-1, ft3.shape[-1])
    rows_s = fs3.reshape(-1, fs3.shape[-1])
    per_row = [spearmanr(t, s).statistic for t, s in zip(rows_t[:256], rows_s[:256], strict=True)]
    return {
        "distance_mae": float(np.mean(np.abs(f_s - f_t))),
        "distance_rmse": float(np.sqrt(np.mean((f_s - f_t) ** 2))),
        "teacher_distance_std": float(np.std(f_t)),
        "spearman": float(spearmanr(f_t, f_s).statistic),
        "spearman_per_state": float(np.nanmean(per_row)),
        "action_mse": float(np.mean(np.sum((a_s - a_t) ** 2, axis=-1))),
    }


# --------------------------------------------------------------------------- one run


def _teacher_config(teacher_dir: Path) -> CRLConfig:
    path = teacher_dir / crl_run.CONFIG_FILE
    if path.is_file():
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError:
            fields = None  # load_config names the line and column below
        if isinstance(fields, dict) and "critic_depth" not in fields:
            raise RunError(
                f"{teacher_dir} is not a CRL run ({path} has no critic_depth; keys: "
                f"{', '.join(sorted(fields)[:6])}...); the teacher must be a run directory of "
                f"`anyskill train crl`"
            )
    elif teacher_dir.is_file():
        raise RunError(
            f"{teacher_dir} is a file; the teacher must be a run directory of `anyskill train crl`"
        )
    return crl_run.load_config(teacher_dir)


def distill_run(
    teacher_dir: Path,
    run_dir: Path,
    config: DistillConfig = DistillConfig(),
    progress: bool = True,
    log=print,
) -> dict:
    """Distil ``teacher_dir`` into a new CRL run directory ``run_dir``; returns the summary
    (also written to ``run_dir/distill.json``)."""
    teacher_dir, run_dir = Path(teacher_dir), Path(run_dir)
    t_config = _teacher_config(teacher_dir)
    s_config = student_config(t_config, config.student)
    if run_dir.resolve() == teacher_dir.resolve():
        raise RunError(f"--run-dir {run_dir} is the teacher's run directory; choose another")
    crl_run._refuse_existing_run(run_dir)
    teacher, t_state, t_meta = crl_run.load_trained(teacher_dir)
    student = make_train(s_config, devices=jax.local_devices())
    if int(t_state.buffer.size) < 2:
        raise RunError(
            f"{teacher_dir}: the teacher's replay buffer is empty; nothing to learn from"
        )
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
    distiller = Distiller(config, teacher, student, optax.adam(schedule))

    key = jax.random.PRNGKey(config.seed)
    k_init, k_train, k_held, k_eval = jax.random.split(key, 4)
    t_params = jax.device_put(t_state.params)
    buffer = jax.device_put(t_state.buffer)
    train_buf, held_buf = split_columns(buffer, config.heldout_fraction)
    state = distiller.init(k_init)

    predict = jax.jit(distiller.predictions)
    held = jax.jit(distiller.heldout_pairs)(held_buf, k_held)
    before = heldout_report(predict(state.critic, state.actor, t_params, held))

    chunk = jax.jit(distiller.train_chunk, static_argnums=4, donate_argnums=0)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, unit="step", dynamic_ncols=True, desc="distill crl")
    t0, done, metrics = time.time(), 0, {}
    try:
        while done < config.steps:
            n = min(config.log_every, config.steps - done)
            state, metrics = chunk(state, t_params, train_buf, k_train, n)
            metrics = {k: float(v) for k, v in metrics.items()}
            done += n
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise crl_run.NonFiniteLoss(
                    f"non-finite {', '.join(bad)} after {done} distillation steps; nothing was "
                    f"saved. Try a lower --learning-rate"
                )
            if bar is not None:
                bar.update(n)
                bar.set_postfix(
                    dist_mse=f"{metrics['critic_mse']:.3f}", act_mse=f"{metrics['action_mse']:.4f}"
                )
            else:
                log(
                    f"step {done}: critic_mse={metrics['critic_mse']:.4f} "
                    f"kl={metrics['critic_kl']:.4f} action_mse={metrics['action_mse']:.5f}"
                )
    finally:
        if bar is not None:
            bar.close()
    train_time = time.time() - t0
    after = heldout_report(predict(state.critic, state.actor, t_params, held))

    # an ordinary CRL state: the student's networks (fresh optimisers: a resumed
    # `anyskill train crl` fine-tunes from here), the teacher's temperature, envs and buffer
    s_state = student.init_state(k_init)
    s_state = s_state.replace(
        params=CRLParams(
            actor=state.actor, critic=state.critic, log_alpha=t_state.params.log_alpha
        ),
        env_state=t_state.env_state,
        buffer=t_state.buffer,
        key=t_state.key,
        env_steps=t_state.env_steps,
        grad_steps=t_state.grad_steps,
    )
    summary: dict = {
        "teacher": str(teacher_dir),
        "student": str(run_dir),
        "distill": dataclasses.asdict(config),
        "teacher_nets": _nets(t_config),
        "student_nets": _nets(s_config),
        "teacher_actor_macs": actor_macs(**_macs_args(teacher, t_config)),
        "student_actor_macs": actor_macs(**_macs_args(student, s_config)),
        "train_time_s": train_time,
        "final_train_metrics": metrics,
        "heldout_before": before,
        "heldout_after": after,
    }
    summary["macs_ratio"] = summary["teacher_actor_macs"] / summary["student_actor_macs"]
    if config.eval_episodes:
        k = jax.random.PRNGKey(12345)  # `anyskill eval`'s default goals
        d = len(jax.local_devices())
        n = max(d, config.eval_episodes // d * d)
        for name, tr, params in (
            ("teacher", teacher, t_params),
            ("student", student, s_state.params),
        ):
            success, _, _ = jax.jit(tr.rollout, static_argnums=2)(params, k, n)
            success = np.asarray(success)
            summary[f"{name}_success_any"] = float(success.any(axis=0).mean())
            summary[f"{name}_time_at_goal"] = float(success.sum(axis=0).mean())
        summary["eval_episodes"] = n

    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / crl_run.CONFIG_FILE, rundir.config_to_json(s_config), indent=2)
    row = {
        "epoch": int(t_meta["epoch"]),
        "env_steps": int(t_meta["env_steps"]),
        "grad_steps": int(t_state.grad_steps),
        "wall_time": train_time,
        "distill_steps": config.steps,
        **{f"heldout_{k}": v for k, v in after.items()},
    }
    for k in ("success_any", "time_at_goal"):
        if f"student_{k}" in summary:
            row[k] = summary[f"student_{k}"]
    checkpoint.atomic_write_bytes(
        run_dir / crl_run.METRICS_FILE, (rundir.dumps(row) + "\n").encode()
    )
    checkpoint.save(
        run_dir / crl_run.CHECKPOINT_FILE,
        jax.device_get(s_state),
        {
            "epoch": int(t_meta["epoch"]),
            "env_steps": int(t_meta["env_steps"]),
            "config": dataclasses.asdict(s_config),
            "distilled_from": str(teacher_dir),
        },
    )
    rundir.write_json(run_dir / DISTILL_FILE, summary, indent=2)
    return summary


def _nets(c: CRLConfig) -> dict:
    return {
        k: getattr(c, k) for k in ("critic_depth", "critic_width", "actor_depth", "actor_width")
    }


def _macs_args(trainer: CRLTrainer, c: CRLConfig) -> dict:
    env = trainer.env
    return dict(
        obs_dim=env.obs_dim,
        goal_dim=env.goal_dim,
        action_dim=env.action_dim,
        width=c.actor_width,
        depth=c.actor_depth,
    )
