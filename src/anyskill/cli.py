"""The ``anyskill`` command.

    anyskill train crl [--preset NAME] [--env ENV] [--depth D] [--run-dir DIR] [--resume] ...
    anyskill eval RUN_DIR [--episodes N] [--video PATH]
    anyskill train policy --data PATH [--model.arch vla|mlp-bc|mlp-flow] [--run-dir DIR] ...
    anyskill eval policy RUN_DIR [--episodes N] [--split train heldout] [--video PATH]
    anyskill render --env ENV [--policy expert|random|zero|RUN_DIR] [--out PATH]
    anyskill envs        list environments
    anyskill presets     list training presets
    anyskill data info|validate|stats|render|merge|split|record ...   episode store
    anyskill serve [CKPT | --policy NAME] [--port P] [--max-batch N] ...   policy server
    anyskill run-robot --server ws://HOST:PORT [--task T] [--latency-ms MS] ...
    anyskill flywheel [--env ENV] [--rounds K] [--run-dir DIR] [--resume] ...   RECAP loop
    anyskill demo [--run-dir DIR] ...   the whole loop on the embedded default, with a report
    anyskill label DATASET [--all-episodes]   label episodes success/failure by hand

Every subcommand has ``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import tyro

from anyskill.algos.crl.config import PRESETS, CRLConfig, get_preset
from anyskill.names import unknown_name

USAGE = """usage: anyskill COMMAND ...

commands:
  train crl   train goal-conditioned contrastive RL (self-supervised, no reward)
  eval        evaluate a run's latest checkpoint and write a rollout video
  train policy  train the π0-style VLA (or an MLP baseline) from an episode store
  eval policy   closed-loop success of a trained policy per task family
  render      write a video of a policy or scripted expert on any task
  envs        list the built-in environments
  presets     list the training presets
  data        episode store (LeRobot v3.0): info, validate, stats, render, merge, split, record
  serve       serve a policy over websocket (openpi protocol), batching concurrent clients
  run-robot   run a simulated robot in real time against a policy server
  flywheel    learn from experience (RECAP): deploy, label, correct, value, advantage, retrain
  demo        demonstrations -> starting policy -> flywheel rounds -> report (the main job)
  label       label a dataset's episodes as success or failure, watching each one's video

`anyskill COMMAND --help` describes each command.
"""


@dataclasses.dataclass(frozen=True)
class TrainCRL:
    """Train contrastive RL on a goal-conditioned environment.

    Starts from a named preset (--preset); any config flag overrides it."""

    config: Annotated[CRLConfig, tyro.conf.OmitArgPrefixes]
    preset: str = "pointmaze-u"
    """Named starting configuration (see `anyskill presets`)."""
    run_dir: Path | None = None
    """Where config, metrics, checkpoints and plots go (default runs/ENV-dDEPTH-sSEED)."""
    depth: int | None = None
    """Shortcut that sets both --critic-depth and --actor-depth."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint, with its saved config."""
    video: bool = True
    """After training, write rollouts.gif of evaluation episodes into the run dir."""
    progress: bool = True
    """Show a progress bar (otherwise one log line per epoch)."""


@dataclasses.dataclass(frozen=True)
class Eval:
    """Evaluate a run's latest checkpoint on fresh (far) goals and draw rollouts."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory written by `anyskill train crl`."""
    episodes: int = 256
    """Number of evaluation episodes."""
    video: Path | None = None
    """Video path (.gif or .mp4); default RUN_DIR/rollouts.gif. Use --no-video to skip."""
    no_video: bool = False
    """Skip the video."""
    video_episodes: int = 8
    """Episodes drawn side by side in the video."""
    seed: int = 12345
    """Seed for the evaluation goals."""


@dataclasses.dataclass(frozen=True)
class Render:
    """Write a GIF/MP4 of a policy or scripted expert on any built-in task."""

    env: str | None = None
    """Environment (see `anyskill envs`); default: the run's env when --policy is a run."""
    policy: str = "expert"
    """'expert' (tabletop tasks), 'random', 'zero', or a run directory of `anyskill train crl`."""
    out: Path = Path("render.mp4")
    """Output video (.mp4 or .gif)."""
    episodes: int = 4
    """Episodes drawn side by side."""
    size: int = 192
    """Pixels per episode tile."""
    steps: int | None = None
    """Steps to run (default: the env's episode length)."""
    split: str | None = None
    """Tabletop task split: train, heldout or all."""
    noise: float = 0.1
    """Action noise of the scripted expert."""
    seed: int = 0
    fps: float = 10.0


# --------------------------------------------------------------------------- anyskill data

DATA_USAGE = """usage: anyskill data SUBCOMMAND PATH ...

subcommands:
  info       episodes, frames, tasks and success rate by source
  validate   check every invariant; names the first broken file and field
  stats      normalization statistics (mean, std, min, max, q01, q99); --write saves them
  render     write a video of chosen episodes
  merge      concatenate datasets into a NEW dataset
  split      write NEW train/val datasets
  record     record scripted-expert demonstrations of a tabletop task

`anyskill data SUBCOMMAND --help` describes each.
"""


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """Summarise a dataset: episodes, frames, tasks, success rate by source."""

    path: tyro.conf.Positional[Path]
    """Dataset root (the folder holding meta/ and data/)."""
    tasks: bool = False
    """Also list every task string."""


@dataclasses.dataclass(frozen=True)
class DataValidate:
    """Check every invariant of a dataset; exit 2 naming the first broken file and field."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    deep: bool = False
    """Also decode every video and check its frame count and size."""


@dataclasses.dataclass(frozen=True)
class DataStats:
    """Print exact per-feature statistics computed from the full columns."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    write: bool = False
    """Replace meta/stats.json with these exact statistics (atomic)."""


@dataclasses.dataclass(frozen=True)
class DataRender:
    """Write a GIF/MP4 of episodes: stored camera video, else redrawn by the recording env."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    episodes: tuple[int, ...] = (0,)
    """Episode indices, drawn side by side."""
    out: Path = Path("episodes.mp4")
    """Output video (.mp4 or .gif)."""
    camera: str | None = None
    """Camera feature to show (default: the first)."""


@dataclasses.dataclass(frozen=True)
class DataMerge:
    """Concatenate datasets with the same features into a NEW dataset (inputs untouched)."""

    paths: tyro.conf.Positional[tuple[Path, ...]]
    """Input dataset roots, in order."""
    out: Path
    """Output dataset root; must not exist."""


@dataclasses.dataclass(frozen=True)
class DataSplit:
    """Write OUT/train and OUT/val as NEW datasets (input untouched)."""

    path: tyro.conf.Positional[Path]
    """Dataset root."""
    out: Path
    """Output folder; must not exist."""
    val_fraction: float = 0.1
    """Fraction of episodes drawn (seeded) into val."""
    val_episodes: tuple[int, ...] | None = None
    """Explicit val episodes (overrides --val-fraction)."""
    seed: int = 0
    """Seed of the random split."""


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """Record scripted-expert demonstrations of a tabletop task into a dataset."""

    out: Path
    """Dataset root; a new one is created, or an existing recording is continued."""
    env: str = "tabletop-push"
    """A tabletop environment (see `anyskill envs`)."""
    episodes: int = 10
    """Episodes to record."""
    images: bool = False
    """Also record the camera (observation.images.top, MP4)."""
    image_size: int = 64
    """Camera image side in pixels."""
    noise: float = 0.1
    """Action noise of the scripted expert."""
    dart: bool = False
    """DART: execute the noisy action but record the expert's noise-free action as the label
    (the executed one is kept as action.executed). Use with a larger --noise (e.g. 0.3) for
    demonstrations that show recoveries."""
    seed: int = 0
    """Seed of the episodes (episode i starts from fold_in(key(seed), i))."""


DATA_COMMANDS = {
    "info": DataInfo,
    "validate": DataValidate,
    "stats": DataStats,
    "render": DataRender,
    "merge": DataMerge,
    "split": DataSplit,
    "record": DataRecord,
}


def cmd_data(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(DATA_USAGE)
        return 0
    sub, rest = args[0], args[1:]
    if sub not in DATA_COMMANDS:
        raise unknown_name("data subcommand", sub, DATA_COMMANDS)
    parsed = tyro.cli(DATA_COMMANDS[sub], args=rest, prog=f"anyskill data {sub}")
    from anyskill.data import ops
    from anyskill.data.reader import Dataset

    if isinstance(parsed, DataInfo):
        ds = Dataset.open(parsed.path)
        summary = ds.summary()
        if parsed.tasks:
            summary["task_list"] = ds.tasks
        print(json.dumps(summary, indent=2))
    elif isinstance(parsed, DataValidate):
        from anyskill.data.validate import validate

        report = validate(parsed.path, deep=parsed.deep)
        print(json.dumps(dataclasses.asdict(report), indent=2))
        print(f"ok: {report.episodes} episodes, {report.frames} frames", file=sys.stderr)
    elif isinstance(parsed, DataStats):
        ds = Dataset.open(parsed.path)
        stats = ops.exact_stats(ds)
        if parsed.write:
            ops.write_stats(ds, stats)
        print(json.dumps({k: v.to_json() for k, v in stats.items()}, indent=1))
    elif isinstance(parsed, DataRender):
        ds = Dataset.open(parsed.path)
        path = ops.render(ds, list(parsed.episodes), parsed.out, camera=parsed.camera)
        print(json.dumps({"video": str(path), "episodes": list(parsed.episodes)}))
    elif isinstance(parsed, DataMerge):
        ds = ops.merge(list(parsed.paths), parsed.out)
        print(json.dumps({"out": str(parsed.out), "episodes": ds.num_episodes}))
    elif isinstance(parsed, DataSplit):
        tr, va = ops.split(
            parsed.path, parsed.out, parsed.val_fraction, parsed.seed, parsed.val_episodes
        )
        print(
            json.dumps({"train": tr.num_episodes, "val": va.num_episodes, "out": str(parsed.out)})
        )
    elif isinstance(parsed, DataRecord):
        from tqdm import tqdm

        from anyskill.data.record import record_expert

        with tqdm(total=parsed.episodes, desc="recording", unit="ep") as bar:
            rec = record_expert(
                parsed.out,
                env_name=parsed.env,
                episodes=parsed.episodes,
                images=parsed.images,
                image_size=parsed.image_size,
                noise=parsed.noise,
                seed=parsed.seed,
                progress=bar.update,
                dart=parsed.dart,
            )
        print(json.dumps(dataclasses.asdict(rec), indent=2))
    return 0


def _split_preset(args: list[str], default: str) -> str:
    for i, a in enumerate(args):
        if a == "--preset" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return default


def cmd_train(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: anyskill train {crl,policy} [--help] [flags]\n\nalgorithms:\n"
            "  crl      contrastive RL\n  policy   π0-style VLA or MLP baseline from demonstrations"
        )
        return 0
    algo, rest = args[0], args[1:]
    if algo == "policy":
        return cmd_train_policy(rest)
    if algo != "crl":
        raise ValueError(f"unknown algorithm {algo!r}; available: crl, policy")
    preset_name = _split_preset(rest, "pointmaze-u")
    preset = get_preset(preset_name)

    parsed = tyro.cli(
        TrainCRL,
        args=rest,
        default=TrainCRL(config=preset, preset=preset_name),
        prog="anyskill train crl",
    )
    config = parsed.config
    if parsed.depth is not None:
        config = dataclasses.replace(config, critic_depth=parsed.depth, actor_depth=parsed.depth)
    run_dir = parsed.run_dir or Path("runs") / f"{config.env}-d{config.critic_depth}-s{config.seed}"

    from anyskill.algos.crl import run as crl_run

    history = crl_run.train_run(config, run_dir, resume=parsed.resume, progress=parsed.progress)
    summary = {"run_dir": str(run_dir)}
    if history:
        last = history[-1]
        summary.update(
            {k: last[k] for k in ("env_steps", "wall_time", "success_any", "time_at_goal")}
        )
    if parsed.video:
        result = crl_run.eval_run(run_dir, num_episodes=64, video=run_dir / "rollouts.gif")
        summary["video"] = result["video"]
    summary["curves"] = str(run_dir / crl_run.CURVES_FILE)
    print(json.dumps(summary, indent=2))
    return 0


@dataclasses.dataclass(frozen=True)
class EvalPolicy:
    """Closed-loop success of a trained policy per task family, in the simulator it was
    trained for (chunks executed with replanning)."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory written by `anyskill train policy`."""
    episodes: int = 64
    """Episodes per task family and split."""
    split: tuple[str, ...] = ("train", "heldout")
    """Task splits: train (seen combinations and phrasings), heldout."""
    replan_every: int | None = None
    """Actions executed per chunk (default: the run's)."""
    num_steps: int | None = None
    """Euler steps per chunk (default: the model's)."""
    video: Path | None = None
    """Also write a video (.gif or .mp4) of --video-episodes closed-loop episodes of the
    first split, side by side, each captioned with its instruction and outcome."""
    video_episodes: int = 4
    """Episodes in the video."""
    seed: int = 123


def cmd_train_policy(args: list[str]) -> int:
    from anyskill.algos.vla.config import TrainConfig
    from anyskill.algos.vla.train import train

    cfg = tyro.cli(TrainConfig, args=args, prog="anyskill train policy")
    if not cfg.data and not cfg.resume:
        raise ValueError("--data PATH is required: an episode store (see `anyskill data record`)")
    result = train(cfg)
    print(json.dumps(result, indent=2))
    return 0


def cmd_eval_policy(args: list[str]) -> int:
    parsed = tyro.cli(EvalPolicy, args=args, prog="anyskill eval policy")
    from anyskill.algos.vla.evaluate import Evaluator
    from anyskill.algos.vla.train import chunk_fn_for, load_run, make_eval_env, source_env

    cfg, model, normalizer, params, meta = load_run(parsed.run_dir)
    m = cfg.model
    env = make_eval_env(source_env(cfg.data[0]), m.image_size) if cfg.data else None
    if env is None:
        raise ValueError(
            f"{parsed.run_dir}: its data was not recorded from a built-in tabletop env, so there "
            "is no simulator to evaluate it in"
        )
    chunk_fn = chunk_fn_for(model, normalizer, parsed.num_steps)
    ev = Evaluator(
        env,
        chunk_fn,
        parsed.split,
        parsed.episodes,
        parsed.replan_every or cfg.replan_every,
        m.image_size,
        m.num_cameras,
        m.max_text_len,
    )
    import jax

    result = {
        "run_dir": str(parsed.run_dir),
        "step": meta.get("step"),
        **ev(params, jax.random.key(parsed.seed)),
    }
    if parsed.video is not None:
        from anyskill.algos.vla.evaluate import rollout_video

        result["video"] = rollout_video(
            dataclasses.replace(env, split=parsed.split[0]),
            chunk_fn,
            params,
            jax.random.key(parsed.seed + 1),
            parsed.video,
            episodes=parsed.video_episodes,
            replan_every=parsed.replan_every or cfg.replan_every,
            image_size=m.image_size,
            num_cameras=m.num_cameras,
            max_text_len=m.max_text_len,
        )
    print(json.dumps(result, indent=2))
    return 0


def cmd_eval(args: list[str]) -> int:
    if args and args[0] == "policy":
        return cmd_eval_policy(args[1:])
    parsed = tyro.cli(Eval, args=args, prog="anyskill eval")
    from anyskill.algos.crl import run as crl_run

    video = None if parsed.no_video else (parsed.video or parsed.run_dir / "rollouts.gif")
    result = crl_run.eval_run(
        parsed.run_dir,
        parsed.episodes,
        video=video,
        video_episodes=parsed.video_episodes,
        seed=parsed.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_render(args: list[str]) -> int:
    parsed = tyro.cli(Render, args=args, prog="anyskill render")
    import jax

    from anyskill import envs
    from anyskill.envs import video

    if parsed.episodes < 1 or parsed.size < 16:
        raise ValueError(
            f"--episodes must be >= 1 and --size >= 16, got {parsed.episodes} and {parsed.size}"
        )
    overrides = {} if parsed.split is None else {"split": parsed.split}
    policy_path = Path(parsed.policy)
    if parsed.policy not in video.POLICIES and policy_path.is_dir():
        from anyskill.algos.crl import run as crl_run

        trainer, state, _ = crl_run.load_trained(policy_path)
        env = envs.make(parsed.env, **overrides) if parsed.env else trainer.eval_env
        if env.obs_dim != trainer.env.obs_dim or env.goal_dim != trainer.env.goal_dim:
            raise ValueError(
                f"run {policy_path} was trained on {trainer.env.name} (obs {trainer.env.obs_dim},"
                f" goal {trainer.env.goal_dim}); {env.name} has obs {env.obs_dim}, goal "
                f"{env.goal_dim}"
            )
        params = state.params

        def policy(s, key):
            return trainer.act(params, key, s.obs[None], s.goal[None], deterministic=True)[0]
    else:
        if parsed.env is None:
            raise ValueError("--env is required unless --policy is a run directory")
        env = envs.make(parsed.env, **overrides)
        policy = video.builtin_policy(env, parsed.policy, noise=parsed.noise)
    frames, summary = video.render_rollouts(
        env, policy, jax.random.key(parsed.seed), parsed.episodes, parsed.size, parsed.steps
    )
    summary["video"] = str(video.save_rollout_video(frames, parsed.out, fps=parsed.fps))
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- anyskill serve


@dataclasses.dataclass(frozen=True)
class Serve:
    """Serve a policy over websocket (openpi's wire protocol; openpi-client works unchanged).

    Give a checkpoint directory (CKPT) or a built-in with --policy."""

    checkpoint: tyro.conf.Positional[Annotated[str | None, tyro.conf.arg(metavar="CKPT")]] = None
    """Checkpoint directory of a trained policy (or a built-in policy name)."""
    policy: str | None = None
    """Built-in policy: expert:tabletop-reach (scripted stand-in) or random-mlp (compute load)."""
    host: str = "127.0.0.1"
    """Interface to bind (loopback by default; 0.0.0.0 accepts other machines)."""
    port: int = 8000
    """TCP port (0 picks a free one)."""
    max_batch: int = 16
    """Most concurrent requests merged into one forward pass."""
    batch_wait_ms: float = 2.0
    """Longest a request waits for others to join its batch."""
    no_batching: bool = False
    """One forward pass per request (same as --max-batch 1)."""
    max_request_mb: float = 4.0
    """Requests larger than this get an error reply."""
    width: int | None = None
    """random-mlp only: hidden units per layer."""
    depth: int | None = None
    """random-mlp only: hidden layers."""
    verbose: bool = False
    """Log every connection and failure (INFO)."""


@dataclasses.dataclass(frozen=True)
class RunRobot:
    """Run a simulated robot in real time against a policy server, with injected faults."""

    server: str = "ws://127.0.0.1:8000"
    """Policy server URL."""
    task: str = "tabletop-reach"
    """A tabletop task (see `anyskill envs`)."""
    episodes: int = 10
    """Episodes to run."""
    latency_ms: float = 0.0
    """Delay injected into every reply."""
    jitter_ms: float = 0.0
    """Std of Gaussian noise on the injected delay."""
    disconnect_every: float = 0.0
    """Drop the connection after about this many seconds connected (0: never)."""
    disconnect_for: float = 1.0
    """Seconds the link stays down after each injected drop."""
    fallback: str = "hold"
    """Local policy when no chunk is ready: 'hold' (stand still) or 'expert' (scripted)."""
    lead: int = 3
    """Request the next chunk when this many actions of the current one remain."""
    blend_steps: int = 3
    """Steps over which a new chunk is cross-faded in."""
    execute_horizon: int | None = None
    """Actions of each chunk to execute (default: the whole chunk)."""
    image_size: int = 64
    """Camera size rendered when the policy asks for observation/image."""
    record: Path | None = None
    """Append executed episodes to this episode store (created if missing)."""
    seed: int = 0
    """Seed of the episodes."""


def cmd_serve(args: list[str]) -> int:
    parsed = tyro.cli(Serve, args=args, prog="anyskill serve")
    import logging

    from anyskill.policies import registry
    from anyskill.serve.server import ServerConfig, run_server

    logging.basicConfig(level=logging.INFO if parsed.verbose else logging.WARNING)
    if (parsed.checkpoint is None) == (parsed.policy is None):
        raise ValueError(
            "give exactly one of CKPT (a checkpoint directory) or --policy NAME "
            f"({', '.join(registry.BUILTIN_POLICIES)}); got "
            f"CKPT={parsed.checkpoint!r}, --policy={parsed.policy!r}"
        )
    overrides = {k: v for k in ("width", "depth") if (v := getattr(parsed, k)) is not None}
    policy = registry.resolve(parsed.policy or parsed.checkpoint, **overrides)
    config = ServerConfig(
        host=parsed.host,
        port=parsed.port,
        max_batch=1 if parsed.no_batching else parsed.max_batch,
        batch_wait_ms=parsed.batch_wait_ms,
        max_request_bytes=int(parsed.max_request_mb * (1 << 20)),
        hard_limit_bytes=max(16 << 20, 2 * int(parsed.max_request_mb * (1 << 20))),
    )
    run_server(policy, config)
    return 0


def cmd_run_robot(args: list[str]) -> int:
    parsed = tyro.cli(RunRobot, args=args, prog="anyskill run-robot")
    from anyskill.serve.robot import run_robot
    from anyskill.serve.runtime import LinkFaults, RuntimeConfig

    faults = LinkFaults(
        latency_ms=parsed.latency_ms,
        jitter_ms=parsed.jitter_ms,
        disconnect_every_s=parsed.disconnect_every,
        disconnect_for_s=parsed.disconnect_for,
        seed=parsed.seed,
    )
    runtime = RuntimeConfig(
        execute_horizon=parsed.execute_horizon, lead=parsed.lead, blend_steps=parsed.blend_steps
    )
    try:
        result = run_robot(
            parsed.server,
            task=parsed.task,
            image_size=parsed.image_size,
            episodes=parsed.episodes,
            faults=faults,
            runtime=runtime,
            fallback=parsed.fallback,
            seed=parsed.seed,
            record=parsed.record,
            progress=True,
        )
    except ConnectionError as e:
        print(f"anyskill: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


def cmd_envs(args: list[str]) -> int:
    from anyskill import envs

    for name in sorted(envs.REGISTRY):
        env = envs.make(name)
        print(
            f"{name:24s} obs={env.obs_dim} goal={env.goal_dim} action={env.action_dim} "
            f"episode={env.episode_length} control={env.control_hz:g}Hz "
            f"success<{env.success_threshold}"
        )
    return 0


def cmd_presets(args: list[str]) -> int:
    for name, cfg in PRESETS.items():
        print(
            f"crl/{name:18s} env={cfg.env} steps={cfg.total_env_steps:,} envs={cfg.num_envs} "
            f"depth={cfg.critic_depth}/{cfg.actor_depth} width={cfg.critic_width}"
        )
    return 0


def cmd_flywheel(args: list[str]) -> int:
    from anyskill.flywheel.config import FlywheelConfig
    from anyskill.flywheel.loop import NeedsLabels, run_flywheel

    cfg = tyro.cli(FlywheelConfig, args=args, prog="anyskill flywheel")
    try:
        st = run_flywheel(cfg)
    except NeedsLabels as e:
        print(f"anyskill flywheel: paused: {e}", file=sys.stderr)
        return 4
    print(f"report: {cfg.run_dir / 'report.md'} ({st['round'] - 1} rounds done)")
    return 0


def cmd_demo(args: list[str]) -> int:
    """The README's main job: resumes by itself when its run directory already exists."""
    from anyskill.flywheel.config import FlywheelConfig
    from anyskill.flywheel.loop import run_flywheel

    default = FlywheelConfig(run_dir=Path("runs/demo"))
    cfg = tyro.cli(
        FlywheelConfig,
        args=args,
        default=default,
        prog="anyskill demo",
        description="Record scripted demonstrations, train a starting policy, run the RECAP "
        "flywheel for a few rounds and write a report (runs/demo/report.md); about 15 minutes "
        "on 2 CPU cores. Re-running continues an interrupted demo.",
    )
    if (cfg.run_dir / "state.json").exists() and not cfg.resume:
        print(f"continuing the demo in {cfg.run_dir}", file=sys.stderr)
        cfg = dataclasses.replace(cfg, resume=True)
    st = run_flywheel(cfg)
    print(f"report: {cfg.run_dir / 'report.md'} ({st['round'] - 1} rounds done)")
    return 0


def cmd_label(args: list[str]) -> int:
    from anyskill.flywheel.label import LabelConfig, label_episodes

    cfg = tyro.cli(LabelConfig, args=args, prog="anyskill label")
    print(json.dumps(label_episodes(cfg)))
    return 0


COMMANDS = {
    "label": cmd_label,
    "flywheel": cmd_flywheel,
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "render": cmd_render,
    "envs": cmd_envs,
    "presets": cmd_presets,
    "data": cmd_data,
    "serve": cmd_serve,
    "run-robot": cmd_run_robot,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"anyskill: unknown command {cmd!r}.{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    from anyskill.algos.crl.run import NonFiniteLoss
    from anyskill.checkpoint import CheckpointError

    try:
        return COMMANDS[cmd](rest)
    except NonFiniteLoss as e:
        print(f"anyskill: {e}", file=sys.stderr)
        return 3
    except (ValueError, CheckpointError) as e:
        print(f"anyskill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
