"""The ``anyskill`` command.

    anyskill train crl [--preset NAME] [--env ENV] [--depth D] [--run-dir DIR] [--resume] ...
    anyskill eval RUN_DIR [--episodes N] [--video PATH]
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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "envs": cmd_envs, "presets": cmd_presets}


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
