"""Steps per second of external simulators (OGBench, gym-pusht) through their own APIs.

What is timed: ``env.step(action)`` in a Python loop on one env, built the way each package
documents it — OGBench's ``cube-single-play-v0`` with ``ogbench.make_env_and_datasets(...,
env_only=True)`` (no dataset download), gym-pusht's ``PushT-v0`` with ``gymnasium.make`` for
state and for pixel observations. Actions are drawn uniformly from the action space before the
timer starts; when an episode ends, ``env.reset()`` runs inside the timer (OGBench: the next
of its evaluation tasks, ``render_goal=False``), as in an evaluation loop. Neither package
ships a vector env of its own; ``--vector-envs N`` adds Gymnasium's generic
``SyncVectorEnv``/``AsyncVectorEnv`` over N copies for reference. Prints a Markdown table and
the machine, and writes the rows as JSON.

    python benchmarks/external_env_throughput.py
    python benchmarks/external_env_throughput.py --steps-scale 0.2 --repeats 2
    python benchmarks/external_env_throughput.py --vector-envs 4 --vector-mode sync async
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
from common import machine_info

OGBENCH_CUBE = "cube-single-play-v0"
PUSHT = "gym_pusht/PushT-v0"
DEFAULT_OUT = Path(__file__).parent / "results" / "external_env_throughput.json"


def make_cube() -> gym.Env:
    import ogbench

    return ogbench.make_env_and_datasets(OGBENCH_CUBE, env_only=True)


def make_pusht(obs_type: str) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)

        return gym.make(PUSHT, obs_type=obs_type)

    return make


#: name shown in the table -> (constructor, reset options per episode index, steps per call)
CASES: dict[str, tuple[Callable[[], gym.Env], Callable[[int], dict | None], int]] = {
    f"ogbench {OGBENCH_CUBE} (state)": (
        make_cube,
        lambda episode: {"task_id": episode % 5 + 1, "render_goal": False},
        1000,
    ),
    "gym-pusht PushT-v0 (state)": (make_pusht("state"), lambda episode: None, 2000),
    "gym-pusht PushT-v0 (pixels_agent_pos, 96x96)": (
        make_pusht("pixels_agent_pos"),
        lambda episode: None,
        400,
    ),
}


def measure_single(make, options, steps: int, repeats: int, warmup: int = 20) -> dict:
    env = make()
    episodes = 0
    env.reset(seed=0, options=options(episodes))
    env.action_space.seed(0)

    def run(actions) -> None:
        nonlocal episodes
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                episodes += 1
                env.reset(options=options(episodes))

    run([env.action_space.sample() for _ in range(warmup)])
    times = []
    for _ in range(repeats):
        actions = [env.action_space.sample() for _ in range(steps)]
        t0 = time.perf_counter()
        run(actions)
        times.append(time.perf_counter() - t0)
    env.close()
    return {
        "best": steps / min(times),
        "median": steps / statistics.median(times),
        "steps_per_call": steps,
        "episodes_ended": episodes,
    }


def measure_vector(make, options, num_envs: int, mode: str, steps: int, repeats: int) -> dict:
    cls = gym.vector.SyncVectorEnv if mode == "sync" else gym.vector.AsyncVectorEnv
    # NEXT_STEP autoreset (Gymnasium's default): sub-envs reset themselves, without options.
    env = cls([make] * num_envs)
    env.reset(seed=0, options=options(0))
    env.action_space.seed(0)
    calls = max(1, steps // num_envs)
    env.step(env.action_space.sample())
    times = []
    for _ in range(repeats):
        actions = [env.action_space.sample() for _ in range(calls)]
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        times.append(time.perf_counter() - t0)
    env.close()
    total = calls * num_envs
    return {
        "best": total / min(times),
        "median": total / statistics.median(times),
        "steps_per_call": total,
        "episodes_ended": None,
    }


def write_json_atomic(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE",
        help=f"what to measure; any of: {'; '.join(CASES)}",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply each case's steps per call"
    )
    parser.add_argument(
        "--vector-envs", type=int, default=0, help="also time Gymnasium's vector envs of N copies"
    )
    parser.add_argument(
        "--vector-mode", nargs="+", default=["sync"], choices=["sync", "async"],
        help="Gymnasium vectorization for --vector-envs",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for the rows")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.steps_scale <= 0 or args.vector_envs < 0:
        parser.error("--repeats >= 1, --steps-scale > 0 and --vector-envs >= 0 are required")

    rows = []
    for name in args.cases:
        make, options, steps = CASES[name]
        steps = max(1, round(steps * args.steps_scale))
        settings = [("single", 1)]
        settings += [(mode, args.vector_envs) for mode in args.vector_mode if args.vector_envs]
        for mode, n in settings:
            if mode == "single":
                r = measure_single(make, options, steps, args.repeats)
            else:
                r = measure_vector(make, options, n, mode, steps, args.repeats)
            row = {"case": name, "mode": mode, "num_envs": n, **r}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    print("| simulator (observation) | vectorization | envs | steps/s (best) | steps/s (median) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['mode']} | {r['num_envs']} | {r['best']:,.0f} | {r['median']:,.0f} |"
        )
    print()
    print(
        f"Best and median of {args.repeats} timed loops; random actions sampled before timing, "
        "resets on episode end included. Single-env Python loops through each package's own "
        "Gymnasium env; 'sync'/'async' are Gymnasium's generic vector envs (NEXT_STEP autoreset)."
    )
    info = machine_info()
    print("\n".join(info))
    write_json_atomic(
        args.out,
        {
            "rows": rows,
            "machine": info,
            "versions": {m: _version(m) for m in ("ogbench", "gym-pusht", "gymnasium", "mujoco")},
            "numpy": np.__version__,
        },
    )
    print(f"\nrows written to {args.out}", file=sys.stderr)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
