"""Success rate of the tabletop scripted experts per task family (the >= 95 % target).

Each env's first episode counts once; episodes start from fresh resets of the family's env.

    python benchmarks/expert_success.py
    python benchmarks/expert_success.py --episodes 512 --split heldout --noise 0.2
"""

from __future__ import annotations

import argparse
import time

import jax
from common import machine_info

from anyskill.envs import make
from anyskill.envs.tabletop import FAMILIES, ScriptedExpert, success_by_family


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--episodes", type=int, default=512, help="episodes per family")
    parser.add_argument("--split", nargs="+", default=["train", "heldout"])
    parser.add_argument("--num-objects", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.1, help="expert action noise std")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print("| split | " + " | ".join(FAMILIES) + " | episodes/family |")
    print("|---|" + "---:|" * (len(FAMILIES) + 1))
    for split in args.split:
        env = make("tabletop", split=split, num_objects=args.num_objects)
        t0 = time.perf_counter()
        rates = success_by_family(
            env, ScriptedExpert(env, noise=args.noise), jax.random.key(args.seed), args.episodes
        )
        cells = " | ".join(f"{100 * rates[f]:.1f} %" for f in FAMILIES)
        print(f"| {split} | {cells} | {args.episodes} |", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print()
    print(f"Expert noise std {args.noise}; {args.num_objects} object slots.")
    print("\n".join(machine_info()))


if __name__ == "__main__":
    main()
