"""The ``anyskill`` command.

    anyskill train crl [--preset NAME] [--env ENV] [--depth D] [--run-dir DIR] [--resume] ...
    anyskill eval RUN_DIR [--episodes N] [--video PATH]
    anyskill render --env ENV [--policy expert|random|zero|RUN_DIR] [--out PATH]
    anyskill envs        list environments
    anyskill presets     list training presets

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

USAGE = """usage: anyskill COMMAND ...

commands:
  train crl   train goal-conditioned contrastive RL (self-supervised, no reward)
  eval        evaluate a run's latest checkpoint and write a rollout video
  render      write a video of a policy or scripted expert on any task
  envs        list the built-in environments
  presets     list the training presets

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


def _split_preset(args: list[str], default: str) -> str:
    for i, a in enumerate(args):
        if a == "--preset" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return default


def cmd_train(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print("usage: anyskill train crl [--help] [flags]\n\nalgorithms:\n  crl   contrastive RL")
        return 0
    algo, rest = args[0], args[1:]
    if algo != "crl":
        raise ValueError(f"unknown algorithm {algo!r}; available: crl")
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


def cmd_eval(args: list[str]) -> int:
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


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "render": cmd_render,
    "envs": cmd_envs,
    "presets": cmd_presets,
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
