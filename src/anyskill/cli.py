"""The ``anyskill`` command.

    anyskill train crl [--preset NAME] [--env ENV] [--depth D] [--run-dir DIR] [--resume] ...
    anyskill eval RUN_DIR [--episodes N] [--video PATH]
    anyskill distill crl TEACHER_RUN --run-dir STUDENT [--student.critic-depth D] ...
    anyskill train policy --data PATH [--model.arch vla|mlp-bc|mlp-flow] [--run-dir DIR] ...
    anyskill eval policy RUN_DIR [--env NAME] [--episodes N] [--split train heldout] [--video PATH]
    anyskill render --env ENV [--policy expert|random|zero|RUN_DIR] [--out PATH]
    anyskill envs        list environments
    anyskill presets     list training presets
    anyskill data info|validate|stats|render|merge|split|record ...   episode store
    anyskill serve [CKPT | --policy NAME] [--port P] [--max-batch N] ...   policy server
    anyskill run-robot --server ws://HOST:PORT [--task T] [--latency-ms MS] ...
    anyskill flywheel [--env ENV] [--rounds K] [--run-dir DIR] [--resume] ...   RECAP loop
    anyskill demo [--run-dir DIR] ...   the whole loop on the embedded default, with a report
    anyskill label DATASET [--all-episodes]   label episodes success/failure by hand
    anyskill diagnose labels RUN_DIR [--round N] | oracle [--env ENV] ...   RECAP's labels

Every subcommand has ``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from anyskill.algos.crl.config import PRESETS, CRLConfig, get_preset
from anyskill.names import unknown_name
from anyskill.policies.planning import PlannerConfig

USAGE = """usage: anyskill COMMAND ...

commands:
  train crl   train goal-conditioned contrastive RL (self-supervised, no reward)
  eval        evaluate a run's latest checkpoint and write a rollout video
  distill crl distil a trained CRL run into a shallower/narrower student run
  train policy  train the π0-style VLA (or an MLP baseline) from an episode store
  train recap   RECAP's deployment flywheel (the same as `anyskill flywheel`)
  eval policy   closed-loop success of a trained policy on any env (per task family)
  render      write a video of a policy or scripted expert on any task
  envs        list the built-in environments
  presets     list the training presets
  data        episode store (LeRobot v3.0): info, validate, stats, render, merge, split, record
  serve       serve a policy over websocket (openpi protocol), batching concurrent clients
  run-robot   run a simulated robot in real time against a policy server
  flywheel    learn from experience (RECAP): deploy, label, correct, value, advantage, retrain
  demo        demonstrations -> starting policy -> flywheel rounds -> report (the main job)
  label       label a dataset's episodes as success or failure, watching each one's video
  diagnose    RECAP's labels: predictability from the action (labels), oracle-label test (oracle)

`anyskill COMMAND --help` describes each command.
"""


# --------------------------------------------------------------------------- parsing


class CommandLineError(Exception):
    """The command line was rejected; ``main`` prints ``PROG: error: MESSAGE`` and exits 2.

    Not a ValueError on purpose: it is raised from inside tyro's parser, where a ValueError
    could be caught and re-rendered."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


#: how a parse error names what a flag expects, by tyro's metavar
_EXPECTS = {"INT": "an integer", "FLOAT": "a number", "STR": "a string", "PATH": "a path"}


def _expects(metavar: str) -> str:
    """``"INT"`` -> ``"an integer"``; ``"{None}|INT"`` -> ``"an integer or None"``."""
    if metavar in _EXPECTS:
        return _EXPECTS[metavar]
    many = re.fullmatch(r"\[?([A-Z]+) \[\1 \.\.\.\]\]?", metavar)  # INT [INT ...]
    if many and many.group(1) in _EXPECTS:
        return _EXPECTS[many.group(1)].split(" ", 1)[1] + "s"  # "integers"
    parts = metavar.split("|")
    if len(parts) > 1 and all(p in _EXPECTS or p == "{None}" for p in parts):
        named = [_EXPECTS[p] for p in parts if p in _EXPECTS]
        return " or ".join(named + ["None"] * ("{None}" in parts))
    return metavar or "another value"


def _flag_value(args: list[str], flags: tuple[str, ...], nargs) -> str | None:
    """The value given to ``flags`` on the command line (the last occurrence), if any."""
    value = None
    for i, a in enumerate(args):
        for f in flags:
            if a == f and i + 1 < len(args):
                if nargs in (None, 1, "?"):
                    value = args[i + 1]
                else:  # the tokens up to the next flag
                    rest = args[i + 1 :]
                    n = next((j for j, t in enumerate(rest) if t.startswith("--")), len(rest))
                    value = " ".join(rest[:n])
            elif a.startswith(f + "="):
                value = a[len(f) + 1 :]
    return value


def _parse_error_line(event, args: list[str]) -> str | None:
    """One line for a tyro parse-error event, or None to let tyro render it (then condensed)."""
    from tyro import _errors

    def name(arg) -> str:
        if arg.is_positional():
            return str(arg.lowered.metavar)
        return f"{arg.lowered.name_or_flags[0]} {arg.lowered.metavar or ''}".strip()

    if isinstance(event, _errors.MissingArgs):
        names = [name(a.arg) for a in event.missing_arguments]
        # A positional's metavar (PATH) says little: add its help's first sentence.
        helps = []
        for a in event.missing_arguments:
            text = a.arg.field.helptext
            text = text() if callable(text) else text
            if a.arg.is_positional() and text:
                text = " ".join(str(text).split())
                short = text if len(text) <= 80 else re.split(r"\.\s+(?=[A-Z])", text)[0]
                helps.append(short.rstrip("."))
        detail = f" ({'; '.join(helps)})" if helps else ""
        return f"missing required argument {', '.join(names)}{detail}"
    if isinstance(event, _errors.InvalidChoice):
        return (
            f"{event.argument.display_name()} must be one of {', '.join(event.choices)}, "
            f"got {event.value!r}"
        )
    if isinstance(event, _errors.BadValue):
        arg = event.argument
        if event.reason == "too_few_values":
            return f"{arg.display_name()} expects a value ({arg.lowered.metavar}), got none"
        return f"{arg.display_name()} takes no value, got {event.offending_value!r}"
    if isinstance(event, _errors.InstantiationFailure):
        arg = event.argument
        if arg is None:  # a config's own check (__post_init__): its message says it all
            return event.message
        expects = _expects(str(arg.lowered.metavar or ""))
        given = (
            _flag_value(args, tuple(arg.lowered.name_or_flags), arg.lowered.nargs)
            if not arg.is_positional()
            else None
        )
        got = f", got {given!r}" if given is not None else f": {event.message}"
        return f"{arg.display_name()} expects {expects}{got}"
    return None  # e.g. unrecognized options: tyro's own text has the "did you mean"


def _condense(box: str) -> str:
    """tyro's boxed error message as one line: its meaningful lines, without the title,
    borders, help texts and the "--help" footer. tyro draws the box with line characters, or
    (when the output cannot encode them) as plain text with the title above a dashed line."""
    rows = []
    for raw in re.sub(r"\x1b\[[0-9;]*m", "", box).splitlines():
        if raw.lstrip().startswith(("╭", "╰")):  # the border, with the box's title
            continue
        line = raw.rstrip()
        if line.lstrip().startswith("│"):  # inside the box's borders
            line = line.lstrip()[1:].rstrip("│").rstrip()
        rows.append((len(line) - len(line.lstrip()), line.strip()))
    rows = [(i, t) for i, t in rows if t]
    rule = set("─-")
    plain = "│" not in box
    if plain and len(rows) > 1 and not set(rows[0][1]) <= rule and set(rows[1][1]) <= rule:
        rows = rows[1:]  # a plain-text title
    lines = [
        (indent, text)
        for indent, text in rows
        if not set(text) <= rule
        and not text.startswith("For full helptext")
        and not (text.endswith("--help") and not text.startswith("-"))
    ]
    if not lines:
        return "invalid command line"
    base = min(indent for indent, _ in lines)
    # A line ending in ":" heads a list of invocations (indented; their help texts are
    # indented further): missing arguments, suggestions, or an argument's help (skipped).
    out, suggestions, section = [], [], None
    for indent, text in lines:
        if indent <= base + 1:
            if text.startswith("Perhaps you meant"):
                section = "suggest"
            elif text.startswith("Argument helptext"):
                section = "skip"
            else:
                section = "list" if text.endswith(":") else None
                out.append(text)
        elif indent <= base + 5 and section == "suggest" and text.startswith("-"):
            suggestions.append(text.split()[0])
        elif indent <= base + 5 and section == "list":
            out[-1] += (" " if out[-1].endswith(":") else ", ") + text
    message = " ".join(out) or lines[0][1]
    message = message[0].lower() + message[1:]
    if suggestions:
        message += f" (did you mean {' or '.join(dict.fromkeys(suggestions))}?)"
    return message


def parse_cli(cls, args: list[str], *, prog: str, **kwargs):
    """``tyro.cli(cls, args=args, prog=prog, **kwargs)``, with every parse error (missing,
    unknown or ill-typed argument, a config check that fails) raised as one-line
    :class:`CommandLineError` instead of tyro's multi-line box. ``--help`` is unchanged."""
    import contextlib
    import io

    try:
        from tyro import _errors  # private and experimental: the fallback below covers it

        hook_context = _errors.on_parse_error
    except (ImportError, AttributeError):
        hook_context = None

    def hook(event) -> None:
        line = _parse_error_line(event, list(args))
        if line is not None:
            raise CommandLineError(prog, " ".join(line.split()))

    captured = io.StringIO()  # tyro's box, or warnings raised while parsing (replayed)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stderr(captured))
            if hook_context is not None:
                stack.enter_context(hook_context(hook))
            parsed = tyro.cli(cls, args=args, prog=prog, **kwargs)
    except CommandLineError:
        raise
    except SystemExit as e:
        if e.code not in (0, None):
            raise CommandLineError(prog, _condense(captured.getvalue())) from None
        sys.stderr.write(captured.getvalue())
        raise
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    return parsed


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
    plan: bool = False
    """After training, also evaluate with the planner (waypoints over a graph of the replay
    buffer weighted by the critic; see --planner.*) and report both."""
    planner: PlannerConfig = PlannerConfig()
    """Planner settings (with --plan)."""


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
    plan: bool = False
    """Search before acting: the actor follows waypoints of shortest paths over a graph of
    the run's replay buffer weighted by its critic's distance (issue 28). Reports the flat
    actor and the planner on the same goals; the video shows the planner."""
    planner: PlannerConfig = PlannerConfig()
    """Planner settings (with --plan)."""

    def __post_init__(self):
        # no episodes would make every rate NaN
        _at_least(("--episodes", self.episodes, 1), ("--video-episodes", self.video_episodes, 1))


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

    def __post_init__(self):
        checks = [
            ("--episodes", self.episodes, self.episodes >= 1, ">= 1"),
            ("--size", self.size, self.size >= 16, ">= 16 pixels"),
            ("--steps", self.steps, self.steps is None or self.steps >= 1, ">= 1"),
            ("--noise", self.noise, self.noise >= 0, ">= 0"),
            ("--fps", self.fps, self.fps > 0, "> 0"),
        ]
        for flag, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"{flag} must be {rule}, got {value}")
        if self.split is not None and self.split not in ("train", "heldout", "all"):
            raise unknown_name("task split", self.split, ("train", "heldout", "all"))
        if self.out.suffix.lower() not in (".gif", ".mp4"):
            raise ValueError(f"--out must end in .gif or .mp4, got {str(self.out)!r}")


def _at_least(*checks: tuple[str, float | None, float]) -> None:
    """Refuse the first ``(flag, value, least)`` whose value is below ``least`` (or NaN);
    a value of None (a default decided later) passes."""
    for flag, value, least in checks:
        if value is not None and not value >= least:  # `not >=` also refuses NaN
            raise ValueError(f"{flag} must be >= {least}, got {value}")


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
  annotate-subtasks  label every frame of a tabletop dataset with its subtask (sidecar file)

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
    """Also decode every video (without it, each video's container is read for its frame
    count and size, which finds truncated or foreign files but not damaged pictures)."""


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
    """Record scripted-expert demonstrations of a tabletop task or of an adapter env with a
    scripted expert (gym-pusht, gym-hil-panda) into a LeRobot v3.0 dataset."""

    out: Path
    """Dataset root; a new one is created, or an existing recording is continued (with the
    same --env, --images, --image-size and --dart; one writer at a time)."""
    env: str = "tabletop-push"
    """A tabletop environment (see `anyskill envs`) or an adapter env with a scripted expert
    (gym-pusht, gym-hil-panda; state observations only, no --images or --dart)."""
    max_steps: int | None = None
    """Time limit of an adapter env's episodes (default: the env's own; the tabletop's is
    fixed per task)."""
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
    instructions: Literal["templates", "grammar"] = "templates"
    """Tabletop instruction text: the five fixed templates per family, or the instruction
    grammar (docs/tasks.md)."""
    subtasks: bool = True
    """Tabletop: label every frame with its subtask afterwards (meta/anyskill/subtasks.parquet;
    see `anyskill data annotate-subtasks`)."""


@dataclasses.dataclass(frozen=True)
class DataAnnotateSubtasks:
    """Label every frame of a tabletop dataset with the subtask it works on ("push the red
    block into the red zone"), read off the recorded states; written to
    meta/anyskill/subtasks.parquet (atomic; frame data untouched; replaces earlier labels)."""

    path: tyro.conf.Positional[Path]
    """Dataset root (recorded demonstrations or deployed episodes of a tabletop env)."""


DATA_COMMANDS = {
    "info": DataInfo,
    "validate": DataValidate,
    "stats": DataStats,
    "render": DataRender,
    "merge": DataMerge,
    "split": DataSplit,
    "record": DataRecord,
    "annotate-subtasks": DataAnnotateSubtasks,
}


def cmd_data(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(DATA_USAGE)
        return 0
    sub, rest = args[0], args[1:]
    if sub not in DATA_COMMANDS:
        raise unknown_name("data subcommand", sub, DATA_COMMANDS)
    parsed = parse_cli(DATA_COMMANDS[sub], rest, prog=f"anyskill data {sub}")
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

        from anyskill.data.record import record_adapter_expert, record_expert

        bars = []  # the bar appears once the dataset is open: a refusal is one clean line

        def progress(n: int) -> None:
            if not bars:
                bars.append(tqdm(total=parsed.episodes, desc="recording", unit="ep"))
            bars[0].update(n)

        from anyskill.envs.adapters import ADAPTER_ENVS

        try:
            if parsed.env in ADAPTER_ENVS:
                if parsed.images or parsed.dart:
                    raise ValueError(
                        f"--env {parsed.env} is recorded from its state observations: --images "
                        "and --dart are for the tabletop's camera and its simulator state"
                    )
                if parsed.instructions != "templates":
                    raise ValueError(
                        f"--instructions {parsed.instructions}: the instruction grammar is the "
                        f"tabletop's; --env {parsed.env} has its own task text"
                    )
                rec = record_adapter_expert(
                    parsed.out,
                    parsed.env,
                    episodes=parsed.episodes,
                    noise=parsed.noise,
                    seed=parsed.seed,
                    max_steps=parsed.max_steps,
                    progress=progress,
                )
            else:
                if parsed.max_steps is not None:
                    raise ValueError(
                        "--max-steps is for adapter envs; a tabletop task's episode length is "
                        "fixed per task mix"
                    )
                rec = record_expert(
                    parsed.out,
                    env_name=parsed.env,
                    episodes=parsed.episodes,
                    images=parsed.images,
                    image_size=parsed.image_size,
                    noise=parsed.noise,
                    seed=parsed.seed,
                    progress=progress,
                    dart=parsed.dart,
                    instructions=parsed.instructions,
                    subtasks=parsed.subtasks,
                )
        finally:
            for bar in bars:
                bar.close()
        print(json.dumps(dataclasses.asdict(rec), indent=2))
    elif isinstance(parsed, DataAnnotateSubtasks):
        from tqdm import tqdm

        from anyskill.data.subtasks import annotate_subtasks

        ds = Dataset.open(parsed.path)
        with tqdm(total=ds.num_episodes, desc="labelling subtasks", unit="ep") as bar:
            summary = annotate_subtasks(parsed.path, progress=bar.update, ds=ds)
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    return 0


def _split_preset(args: list[str], default: str) -> str:
    for i, a in enumerate(args):
        if a == "--preset" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return default


def cmd_train(args: list[str]) -> int:
    """``anyskill train NAME``: every algorithm of :data:`anyskill.algos.ALGORITHMS`."""
    from anyskill.algos import ALGORITHMS, get_algorithm

    if not args or args[0] in ("-h", "--help"):
        words = [w for a in ALGORITHMS.values() for w in a.commands]
        print(
            f"usage: anyskill train {{{','.join(words)}}} [--help] [flags]\n\nalgorithms:\n"
            + "\n".join(f"  {' | '.join(a.commands):<12} {a.summary}" for a in ALGORITHMS.values())
        )
        return 0
    algo = get_algorithm(args[0])
    prog = f"anyskill train {args[0]}"
    if algo.name in TRAIN_COMMANDS:
        return TRAIN_COMMANDS[algo.name](args[1:], prog)
    # parse its config, train, print the result
    result = algo.train_fn(parse_cli(algo.config_class, args[1:], prog=prog))
    from anyskill.rundir import dumps  # never NaN in JSON output

    print(dumps(result, indent=2))
    return 0


def cmd_train_crl(rest: list[str], prog: str = "anyskill train crl") -> int:
    preset_name = _split_preset(rest, "pointmaze-u")
    preset = get_preset(preset_name)

    parsed = parse_cli(
        TrainCRL,
        rest,
        default=TrainCRL(config=preset, preset=preset_name),
        prog=prog,
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
    if parsed.plan:
        from anyskill.algos.crl.planner import eval_planned

        planned = eval_planned(run_dir, parsed.planner, episodes=config.num_eval_envs)
        summary["plan"] = {
            k: planned[k] for k in ("success_any", "flat_success_any", "time_at_goal")
        }
    summary["curves"] = str(run_dir / crl_run.CURVES_FILE)
    from anyskill.rundir import dumps  # never NaN in JSON output

    print(dumps(summary, indent=2))
    return 0


@dataclasses.dataclass(frozen=True)
class EvalPolicy:
    """Closed-loop evaluation of a trained policy (chunks executed with replanning) on any
    env: success per task family and split on a tabletop task mix; success rate, return and
    episode length on any other registered env or adapter env (gym-pusht, gym-hil-panda)."""

    run_dir: tyro.conf.Positional[Path]
    """A run directory written by `anyskill train policy`."""
    env: str | None = None
    """Env to evaluate on (`anyskill envs`, or an adapter env: gym-pusht, gym-hil-panda).
    Default: the env the run's data was recorded from. A policy that reads a field the env
    does not offer (or offers with another shape) is refused, naming the field."""
    episodes: int = 64
    """Episodes per task family and split (tabletop); episodes in all (other envs)."""
    split: tuple[Literal["train", "heldout", "all"], ...] = ("train", "heldout")
    """Task splits of a tabletop task mix: train (seen combinations and phrasings), heldout,
    all."""
    max_steps: int | None = None
    """Steps after which an episode ends (default: the env's own episode length)."""
    replan_every: int | None = None
    """Actions executed per chunk (default: the run's)."""
    num_steps: int | None = None
    """Euler steps per chunk (default: the model's)."""
    video: Path | None = None
    """Also write a video (.gif or .mp4) of --video-episodes closed-loop episodes of the
    first split, side by side, each captioned with its instruction and outcome (tabletop)."""
    video_episodes: int = 4
    """Episodes in the video."""
    seed: int = 123
    subtasks: Literal["predicted", "oracle", "none"] | None = None
    """Where a hierarchical policy's (``--model.subtasks``) subtask comes from at every chunk:
    predicted (its subtask head, with hysteresis; the default for such a run), oracle (from
    the observed scene: the current object until it is in its zone, then the lowest slot
    not in its zone) or none (the instruction itself). A flat run takes only none. Subtask
    accuracy (agreement with the oracle at chunk boundaries) is reported per family."""
    subtask_margin: float = 0.2
    """Hysteresis: switch subtask only when the new one's probability exceeds the current
    one's by this much."""
    num_objects: int | None = None
    """Object slots of a tabletop env (default: the env's own). More than the run's data had
    (sort with more objects than any training episode): the VLA reads the extra slots with
    its object-token weights."""

    def __post_init__(self):
        # no episodes would make every rate NaN
        _at_least(("--episodes", self.episodes, 1), ("--video-episodes", self.video_episodes, 1))
        if self.max_steps is not None:
            _at_least(("--max-steps", self.max_steps, 1))


def cmd_train_policy(args: list[str], prog: str = "anyskill train policy") -> int:
    from anyskill.algos.vla.config import TrainConfig
    from anyskill.algos.vla.train import train

    cfg = parse_cli(TrainConfig, args, prog=prog)
    if not cfg.data and not cfg.resume:
        raise ValueError("--data PATH is required: an episode store (see `anyskill data record`)")
    result = train(cfg)  # with --resume and no --data: the run's own data
    from anyskill.rundir import dumps  # never NaN in JSON output

    print(dumps(result, indent=2))
    return 0


def cmd_eval_policy(args: list[str]) -> int:
    parsed = parse_cli(EvalPolicy, args, prog="anyskill eval policy")
    import jax
    import numpy as np

    from anyskill.algos.vla.evaluate import Evaluator
    from anyskill.algos.vla.policy import VLAPolicy
    from anyskill.algos.vla.train import source_env
    from anyskill.envs.adapters import ADAPTER_ENVS, env_names, make_env
    from anyskill.envs.tabletop import Tabletop
    from anyskill.rollout import HostBatchEnv, JaxBatchEnv, check_inputs, rollout
    from anyskill.rundir import dumps  # never NaN in JSON output

    policy = VLAPolicy(  # loads; compiles nothing
        parsed.run_dir,
        num_steps=parsed.num_steps,
        subtasks=parsed.subtasks,
        subtask_margin=parsed.subtask_margin,
    )
    m = policy.cfg.model
    name = parsed.env
    if name is None:
        src = source_env(policy.cfg.data[0]) if policy.cfg.data else None
        name = (src or {}).get("env")
        if name not in env_names():
            raise ValueError(
                f"{parsed.run_dir}: its data names no env it was recorded from "
                f"({name or 'none'}); give --env NAME: {', '.join(env_names())}"
            )
    if name in ADAPTER_ENVS:
        env = make_env(name)
        steps = parsed.max_steps or ADAPTER_ENVS[name].max_steps
        benv = HostBatchEnv(env, seed=parsed.seed, max_steps=steps)
    else:
        tabletop = name.startswith("tabletop")
        overrides = {"image_size": m.image_size} if tabletop else {}
        if parsed.num_objects is not None:
            if not tabletop:
                raise ValueError(f"--num-objects sets a tabletop's object slots; {name} has none")
            overrides["num_objects"] = parsed.num_objects
        env = make_env(name, **overrides)
        if parsed.num_objects is not None:
            from anyskill.algos.vla.policy import with_object_slots

            policy = with_object_slots(policy, env)
        benv = JaxBatchEnv(env, parsed.max_steps)
    benv.name = name
    # a policy reading a field the env does not offer: one error naming it, nothing compiled
    check_inputs(policy.spec, benv.offered(), name)
    # at most a chunk's worth of actions, as a served VLA's execute_horizon
    replan_every = min(parsed.replan_every or policy.cfg.replan_every, m.horizon)
    key = jax.random.key(parsed.seed)
    result = {"run_dir": str(parsed.run_dir), "step": policy.meta.get("step"), "env": name}
    if isinstance(env, Tabletop) and parsed.max_steps is None:
        ev = Evaluator(env, parsed.split, parsed.episodes, replan_every)
        result.update(ev(policy, key))
    else:
        ep = rollout(benv, policy, key, num_envs=parsed.episodes, replan_every=replan_every)
        live = np.arange(ep.reward.shape[1])[None] < ep.length[:, None]
        result.update(
            episodes=parsed.episodes,
            success_rate=float(np.mean(ep.success)),
            mean_return=float(np.sum(np.where(live, ep.reward, 0.0)) / parsed.episodes),
            mean_length=float(np.mean(ep.length)),
        )
    if parsed.video is not None:
        if not isinstance(env, Tabletop):
            raise ValueError(f"--video draws the tabletop's camera; {name} has none to draw")
        from anyskill.algos.vla.evaluate import rollout_video

        result["video"] = rollout_video(
            dataclasses.replace(env, split=parsed.split[0]),
            policy,
            jax.random.key(parsed.seed + 1),
            parsed.video,
            episodes=parsed.video_episodes,
            replan_every=replan_every,
        )
    print(dumps(result, indent=2))
    return 0


def cmd_eval(args: list[str]) -> int:
    if args and args[0] == "policy":
        return cmd_eval_policy(args[1:])
    parsed = parse_cli(Eval, args, prog="anyskill eval")
    from anyskill.algos.crl import run as crl_run

    video = None if parsed.no_video else (parsed.video or parsed.run_dir / "rollouts.gif")
    result = crl_run.eval_run(
        parsed.run_dir,
        parsed.episodes,
        video=None if parsed.plan else video,
        video_episodes=parsed.video_episodes,
        seed=parsed.seed,
    )
    if parsed.plan:
        from anyskill.algos.crl.planner import eval_planned

        result["plan"] = eval_planned(
            parsed.run_dir,
            parsed.planner,
            parsed.episodes,
            seed=parsed.seed,
            video=video,
            video_episodes=parsed.video_episodes,
        )
    from anyskill.rundir import dumps  # never NaN in JSON output

    print(dumps(result, indent=2))
    return 0


def cmd_distill(args: list[str]) -> int:
    """``anyskill distill crl TEACHER --run-dir STUDENT``: deep teacher -> shallow student."""
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: anyskill distill crl TEACHER_RUN --run-dir STUDENT [--help] [flags]\n\n"
            "  crl   distil a trained CRL run into a shallower/narrower student run"
        )
        return 0
    if args[0] != "crl":
        raise unknown_name("distill subcommand", args[0], {"crl": None})
    from anyskill.algos.crl.distill import DistillCRL, distill_run
    from anyskill.rundir import dumps  # never NaN in JSON output

    parsed = parse_cli(DistillCRL, args[1:], prog="anyskill distill crl")
    summary = distill_run(parsed.teacher, parsed.run_dir, parsed.config, progress=parsed.progress)
    print(dumps({k: v for k, v in summary.items() if k != "distill"}, indent=2))
    return 0


def cmd_render(args: list[str]) -> int:
    parsed = parse_cli(Render, args, prog="anyskill render")
    import jax

    from anyskill import envs
    from anyskill.envs import video

    # Everything the user can get wrong fails here, before any compilation.
    if parsed.env is not None and parsed.env not in envs.REGISTRY:
        raise unknown_name("env", parsed.env, envs.REGISTRY)
    if parsed.out.is_dir():
        raise ValueError(f"--out {parsed.out} is a directory; give a video file path (.mp4/.gif)")
    parent = next((p for p in parsed.out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {parsed.out}: {parent} is a file, not a directory")
    if parsed.policy not in video.POLICIES and not Path(parsed.policy).is_dir():
        raise ValueError(
            f"--policy {parsed.policy!r} is neither one of {', '.join(video.POLICIES)} nor a "
            "run directory (of `anyskill train crl`)"
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
        from anyskill.rollout import StatePolicy

        def act(s, key):  # the CRL actor reads the env's observation and goal
            return trainer.act(params, key, s.obs[None], s.goal[None], deterministic=True)[0]

        policy = StatePolicy(act, env.action_dim, env.control_hz, f"crl:{policy_path}")
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

    Give a checkpoint directory (CKPT: a policy, flywheel or CRL run) or a built-in with
    --policy. A flywheel run serves its RECAP policy as the flywheel deploys it; pick another
    with e.g. `anyskill serve RUN --policy-name bc`, or guide and select with
    `anyskill serve RUN --beta 2 --best-of 4`."""

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
    max_connections: int = 64
    """Open connections beyond which new ones are refused (HTTP 503)."""
    memory_budget_mb: float = 256.0
    """Most MB of requests held at once across connections (beyond: 'overloaded' replies)."""
    idle_timeout_s: float = 60.0
    """Close connections that send no complete request for this long (0: never)."""
    width: int | None = None
    """random-mlp only: hidden units per layer."""
    depth: int | None = None
    """random-mlp only: hidden layers."""
    policy_name: str | None = None
    """Flywheel runs: which of the run's policies to serve — recap (default: conditioned on
    "advantage: positive" as the flywheel deploys it), bc, filtered or start."""
    beta: float | None = None
    """Flywheel runs, recap: classifier-free guidance weight (default: the run's --beta)."""
    best_of: int | None = None
    """Flywheel runs: sample this many chunks per request and serve the one the run's value
    function ranks highest (default 1: no selection)."""
    realtime_guidance: float | None = None
    """Policy runs (vla, mlp-flow): largest guidance weight when inpainting a robot's
    committed plan (real-time chunking; default 5)."""
    realtime_mask: str | None = None
    """Policy runs: 'hard' (default: guide only the committed actions that execute before
    the chunk arrives) or 'soft' (also decaying weights over the rest of the overlap with
    the plan: smoother joins, less reactive)."""
    verbose: bool = False
    """Log every connection and failure (INFO)."""

    def __post_init__(self):
        _at_least(
            ("--beta", self.beta, 0),
            ("--best-of", self.best_of, 1),
            ("--realtime-guidance", self.realtime_guidance, 0),
        )
        if self.realtime_mask not in (None, "soft", "hard"):
            raise ValueError(f"--realtime-mask must be soft or hard, got {self.realtime_mask!r}")


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
    lead: int | None = None
    """Request the next chunk when this many actions of the current one's execute horizon
    remain (default: the delay estimated from the round trips, minus one)."""
    blend_steps: int = 3
    """Steps over which a new chunk is cross-faded in (without real-time chunking)."""
    realtime: bool | None = None
    """Real-time chunking: send the committed plan with each request and execute chunks that
    continue it (default: when the server announces it; --no-realtime: blend instead)."""
    execute_horizon: int | None = None
    """Actions of each chunk to execute (default: the execute horizon the server announces,
    what the policy was trained to execute; else the whole chunk)."""
    image_size: int | None = None
    """Camera size rendered when the policy asks for observation/image (default: the size
    the policy declares)."""
    record: Path | None = None
    """Append executed episodes to this episode store (created if missing)."""
    upload: bool = False
    """Send every finished episode back to the server's /episodes channel (a flywheel round
    with --deploy robots stores it with the round's policy version)."""
    seed: int = 0
    """Seed of the episodes."""

    def __post_init__(self):
        # everything is checked before connecting: a bad flag never waits for a server
        from anyskill.serve.runtime import check_server_url

        try:
            check_server_url(self.server)
        except ValueError as e:
            raise ValueError(f"--server: {e}") from None
        from anyskill.data.record import expert_envs

        tasks = expert_envs()
        if self.task not in tasks:
            raise unknown_name("tabletop task (--task)", self.task, tasks)
        if self.fallback not in ("hold", "expert"):
            raise ValueError(f"--fallback must be 'hold' or 'expert', got {self.fallback!r}")
        _at_least(
            ("--episodes", self.episodes, 1),
            ("--latency-ms", self.latency_ms, 0),
            ("--jitter-ms", self.jitter_ms, 0),
            ("--disconnect-every", self.disconnect_every, 0),
            ("--disconnect-for", self.disconnect_for, 0),
            ("--lead", self.lead, 0),
            ("--blend-steps", self.blend_steps, 0),
            ("--execute-horizon", self.execute_horizon, 1),
            ("--image-size", self.image_size, 1),
        )
        if self.record is not None and self.record.exists() and not self.record.is_dir():
            raise ValueError(
                f"--record {self.record} is a file; give a dataset directory (new or existing)"
            )


def cmd_serve(args: list[str]) -> int:
    parsed = parse_cli(Serve, args, prog="anyskill serve")
    import logging

    from anyskill.policies import registry
    from anyskill.serve.server import ServerConfig, bind, run_server

    logging.basicConfig(level=logging.INFO if parsed.verbose else logging.WARNING)
    if (parsed.checkpoint is None) == (parsed.policy is None):
        raise ValueError(
            "give exactly one of CKPT (a checkpoint directory) or --policy NAME "
            f"({', '.join(registry.BUILTIN_POLICIES)}); got "
            f"CKPT={parsed.checkpoint!r}, --policy={parsed.policy!r}"
        )
    if parsed.memory_budget_mb < parsed.max_request_mb:
        raise ValueError(
            f"--memory-budget-mb ({parsed.memory_budget_mb}) must be >= --max-request-mb "
            f"({parsed.max_request_mb}), or no request of the largest size is ever answered"
        )
    request_bytes = int(parsed.max_request_mb * (1 << 20))
    config = ServerConfig(
        host=parsed.host,
        port=parsed.port,
        max_batch=1 if parsed.no_batching else parsed.max_batch,
        batch_wait_ms=parsed.batch_wait_ms,
        max_request_bytes=request_bytes,
        hard_limit_bytes=max(16 << 20, 2 * request_bytes),
        max_connections=parsed.max_connections,
        max_buffered_bytes=int(parsed.memory_budget_mb * (1 << 20)),
        idle_timeout_s=parsed.idle_timeout_s,
    )
    name = parsed.policy or parsed.checkpoint
    builtin = name in registry.BUILTIN_POLICIES
    overrides = {k: v for k in ("width", "depth") if (v := getattr(parsed, k)) is not None}
    options = {
        k: v
        for k in ("policy_name", "beta", "best_of", "realtime_guidance", "realtime_mask")
        if (v := getattr(parsed, k)) is not None
    }
    if builtin and options:
        raise ValueError(
            f"--{'/--'.join(k.replace('_', '-') for k in options)} apply to checkpoints (a "
            f"flywheel run), not to the built-in {name!r}"
        )
    if overrides and not builtin and Path(name).exists():
        raise ValueError(
            f"--{'/--'.join(overrides)} apply to the built-in random-mlp, not to a checkpoint"
        )
    sock = bind(config.host, config.port)  # before loading: a port in use fails at once
    try:
        policy = registry.resolve(name, **(overrides if builtin else options))
    except BaseException:
        sock.close()
        raise
    run_server(policy, config, sock)
    return 0


def cmd_run_robot(args: list[str]) -> int:
    parsed = parse_cli(RunRobot, args, prog="anyskill run-robot")
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
        execute_horizon=parsed.execute_horizon,
        lead=parsed.lead,
        blend_steps=parsed.blend_steps,
        realtime=parsed.realtime,
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
            upload=parsed.upload,
            progress=True,
        )
    except ConnectionError as e:
        print(f"anyskill: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


@dataclasses.dataclass(frozen=True)
class Envs:
    """List the built-in environments: observation, goal and action sizes, episode length."""


@dataclasses.dataclass(frozen=True)
class Presets:
    """List the named training presets (`anyskill train crl --preset NAME`)."""


def cmd_envs(args: list[str]) -> int:
    parse_cli(Envs, args, prog="anyskill envs")  # --help; anything else is an error
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
    parse_cli(Presets, args, prog="anyskill presets")
    for name, cfg in PRESETS.items():
        print(
            f"crl/{name:18s} env={cfg.env} steps={cfg.total_env_steps:,} envs={cfg.num_envs} "
            f"depth={cfg.critic_depth}/{cfg.actor_depth} width={cfg.critic_width}"
        )
    return 0


def cmd_flywheel(args: list[str], prog: str = "anyskill flywheel") -> int:
    from anyskill.flywheel.config import FlywheelConfig
    from anyskill.flywheel.loop import NeedsLabels, run_flywheel

    if args[:1] == ["end-round"]:  # ask a running robot round to end with what it has
        from anyskill.flywheel.robots import end_round

        if len(args) != 2 or not (Path(args[1]) / "config.json").is_file():
            raise ValueError(
                f"usage: {prog} end-round RUN_DIR (the --run-dir of a running flywheel with "
                f"--deploy robots); got {' '.join(args[1:]) or 'no run directory'}"
            )
        print(f"asked the round to end: {end_round(args[1])}")
        return 0
    cfg = parse_cli(FlywheelConfig, args, prog=prog)
    if cfg.cluster is not None:  # deploy workers on Ray feed one learner
        from anyskill.flywheel.fleet import run_fleet

        result = run_fleet(cfg)
        print(
            f"report: {result.report} (policy version {result.state.version}, "
            f"{result.stored} fleet episodes, {result.state.lost} lost)"
        )
        return 0
    try:
        st = run_flywheel(cfg)
    except NeedsLabels as e:
        print(f"{prog}: paused: {e}", file=sys.stderr)
        return 4
    print(f"report: {cfg.run_dir / 'report.md'} ({st.round - 1} rounds done)")
    return 0


#: where the demo differs from `anyskill flywheel`'s defaults (issue 24, BENCHMARKS.md "The
#: main job"): advantage-weighted regression is trained beside RECAP and collects rounds 2 on
#: (the method that improves most on this data), every round is evaluated on the same 256
#: episodes, and the report explains the results with the label diagnostic
DEMO_SETTINGS = dict(
    # a starting policy from 50 demonstrations (0.33–0.52 success): room to learn in 3 rounds
    demos=50,
    awr_beta=0.05,
    # AWR on the successful episodes and the demonstrations, weighted by advantage
    awr_data="successes",
    deploy_with="awr",
    eval_same_episodes=True,
    eval_episodes=256,
    diagnose=True,
)


def cmd_demo(args: list[str]) -> int:
    """The README's main job: resumes by itself when its run directory already exists."""
    from anyskill.flywheel.config import FlywheelConfig
    from anyskill.flywheel.loop import run_flywheel

    default = FlywheelConfig(run_dir=Path("runs/demo"), **DEMO_SETTINGS)
    cfg = parse_cli(
        FlywheelConfig,
        args,
        default=default,
        prog="anyskill demo",
        description="Record 50 scripted demonstrations, train a starting policy, run the "
        "flywheel for three rounds (RECAP, AWR on the successful episodes — which collects "
        "rounds 2 and 3 —, BC and filtered BC on the same data) and write a report with the "
        "label diagnostic (runs/demo/report.md); about 7 minutes on 2 CPU cores. Re-running "
        "continues an interrupted demo.",
    )
    if (cfg.run_dir / "state.json").exists() and not cfg.resume:
        print(f"continuing the demo in {cfg.run_dir}", file=sys.stderr)
        cfg = dataclasses.replace(cfg, resume=True)
    st = run_flywheel(cfg)
    print(f"report: {cfg.run_dir / 'report.md'} ({st.round - 1} rounds done)")
    return 0


def cmd_label(args: list[str]) -> int:
    from anyskill.flywheel.label import LabelConfig, label_episodes

    cfg = parse_cli(LabelConfig, args, prog="anyskill label")
    print(json.dumps(label_episodes(cfg)))
    return 0


def cmd_diagnose(args: list[str]) -> int:
    """``anyskill diagnose labels RUN_DIR | oracle``: JSON, then a one-paragraph reading."""
    if not args or args[0] in ("-h", "--help"):
        print("usage: anyskill diagnose labels RUN_DIR [--round N] | oracle [--env ENV] ...")
        return 0
    from anyskill.algos.recap.diagnostics import diagnose
    from anyskill.rundir import dumps  # never NaN in JSON output

    out = diagnose(args[0], args[1:], lambda cls, rest, prog: parse_cli(cls, rest, prog=prog))
    print(dumps(out["result"], indent=1))
    print(out["reading"])
    return 0


#: ``anyskill train NAME`` of the algorithms whose command does more than parse its config,
#: train and print the result (CRL's presets and video, the policy's --data check, the
#: flywheel's pause for labels); ``fn(args, prog) -> exit code``
TRAIN_COMMANDS = {"crl": cmd_train_crl, "vla": cmd_train_policy, "recap": cmd_flywheel}

COMMANDS = {
    "label": cmd_label,
    "diagnose": cmd_diagnose,
    "flywheel": cmd_flywheel,
    "demo": cmd_demo,
    "train": cmd_train,
    "eval": cmd_eval,
    "distill": cmd_distill,
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
        _error_line(f"anyskill: error: unknown command {cmd!r}.{hint} See `anyskill --help`.")
        return 2
    from anyskill.algos.crl.run import NonFiniteLoss
    from anyskill.checkpoint import CheckpointError

    # Every failure the user can cause or fix is one line and exit 2 (130 when interrupted);
    # anything else (TypeError, AttributeError, ... from a bug) keeps its traceback.
    try:
        return COMMANDS[cmd](rest)
    except CommandLineError as e:
        _error_line(f"{e.prog}: error: {e}")
        return 2
    except (NonFiniteLoss, FloatingPointError) as e:  # a diverged run; its last checkpoint is kept
        _error_line(f"anyskill: {e}")
        return 3
    except json.JSONDecodeError as e:
        _error_line(f"anyskill: error: {_json_error_message(e)}")
        return 2
    except BrokenPipeError:
        # the reader went away (`anyskill ... | head`): not an error of the user's command.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, CheckpointError) as e:
        _error_line(f"anyskill: error: {e}")
        return 2
    except OSError as e:
        _error_line(f"anyskill: error: {_os_error_message(e)}")
        return 2
    except KeyboardInterrupt:
        _error_line("anyskill: interrupted (what was already saved is kept)")
        return 130


def _error_line(message: str) -> None:
    """``message`` on stderr as one line (a message spanning lines is joined)."""
    print(" ".join(str(message).split()), file=sys.stderr)


def _os_error_message(e: OSError) -> str:
    """What went wrong with which path, and what to do, for the OSError family."""
    import errno

    fixes = {
        errno.ENOENT: ("does not exist", "check the path"),
        errno.EACCES: ("permission denied", "check its permissions or choose another path"),
        errno.EPERM: ("operation not permitted", "check its permissions or choose another path"),
        errno.EISDIR: ("is a directory, not a file", "give the path of a file"),
        errno.ENOTDIR: (
            "is not a directory (or a part of the path is a file)",
            "give the path of a directory",
        ),
        errno.ENOSPC: (
            "no space left on the device",
            "free some space or write elsewhere, then run the command again",
        ),
        errno.EDQUOT: (
            "disk quota exceeded",
            "free some space or write elsewhere, then run the command again",
        ),
        errno.EROFS: ("is on a read-only file system", "write to a writable location"),
        errno.EEXIST: ("already exists", "choose a new path or remove the existing one"),
        errno.ENOTEMPTY: ("is a directory that is not empty", "choose a new or empty directory"),
        errno.ENAMETOOLONG: ("has a name that is too long", "use a shorter path"),
        errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and run again"),
    }
    if e.errno not in fixes:
        if e.filename is None:
            return str(e)
        return f"{e.filename}: {e.strerror or e}"
    what, fix = fixes[e.errno]
    if e.filename is None:
        return f"{e.strerror or what}; {fix}"
    path = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{path}: {what}; {fix}"


def _json_error_message(e: json.JSONDecodeError) -> str:
    """The parse error with the file it came from, found in the failing frames' locals (the
    loaders that call ``json.loads(path.read_text())`` keep ``path`` there)."""
    where = ""
    tb = e.__traceback__
    found = None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, Path | str) and str(value).endswith((".json", ".jsonl")):
                found = value
        tb = tb.tb_next
    if found is not None:
        where = f"{found}: "
    return (
        f"{where}not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
        "restore or rewrite the file"
    )


if __name__ == "__main__":
    sys.exit(main())
