"""Configuration of the deployment flywheel (RECAP) and of ``anyskill demo``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from anyskill.algos.recap.value import ValueConfig
from anyskill.algos.vla.config import ModelConfig
from anyskill.flywheel.deploy import CorrectorConfig
from anyskill.names import unknown_name

#: how RECAP's policy is told the advantage (``--indicator``)
INDICATORS = ("prompt", "embedding", "modulation")


@dataclasses.dataclass(frozen=True)
class FlywheelConfig:
    """Deploy, label, correct, learn a value, retrain conditioned on advantage — K rounds."""

    env: str = "tabletop-reach"
    """Tabletop task mix to deploy on (see `anyskill envs`): tabletop-reach, -push, -gather,
    -sort, or tabletop (all families)."""
    run_dir: Path = Path("runs/flywheel")
    """Everything of the run: data/ (episode store), checkpoints, report.md, plots, videos."""
    rounds: int = 3
    """Flywheel rounds (deploy -> value -> advantages -> retrain -> evaluate)."""
    demos: int = 100
    """Scripted-expert demonstrations the starting policy is trained on."""
    demo_noise: float = 0.1
    """Action noise of the demonstrator."""
    init_steps: int = 600
    """Gradient steps of the starting policy (behaviour cloning on the demonstrations)."""
    episodes_per_round: int = 128
    """Episodes deployed (in parallel) per round."""
    policy_steps: int = 400
    """Fine-tuning steps per round for RECAP and for each baseline."""
    batch_size: int = 64
    """Policy training batch size."""
    lr: float = 3e-4
    """Policy learning rate."""
    model: ModelConfig = ModelConfig(
        arch="vla", width=64, depth=3, heads=2, action_width=64, max_text_len=12
    )
    """Policy architecture: by default a small π0-style VLA (0.6M parameters) that fits the
    15-minute CPU demo; every size is a flag."""
    value: ValueConfig = ValueConfig(steps=600, finetune_steps=200, batch_size=64)
    corrector: CorrectorConfig = CorrectorConfig()
    labels: str = "predicate"
    """predicate: success from the task's predicate; human: episodes are stored unlabelled and
    the loop waits for `anyskill label RUN_DIR/data`."""
    advantage: Literal["nstep", "chunk"] = "nstep"
    """How advantages are computed from the value function. nstep: ``A = sum of n step costs
    + V(s_t+n) - V(s_t)`` (π*0.6); chunk: ``A = Q(s_t, a_t..t+H) - V(s_t)``, the value
    function's estimate with the chunk of H actions that followed (the chunk the policy
    predicts) against its estimate without it."""
    advantage_n: int = 10
    """n of the n-step advantage (--advantage nstep)."""
    positive_fraction: float = 0.3
    """Fraction of each task family's frames marked "advantage: positive"."""
    indicator: Literal["prompt", "embedding", "modulation"] = "prompt"
    """How RECAP's policy is told the advantage: prompt: the words "advantage: positive" /
    "advantage: negative" end the instruction (π*0.6); embedding: a learned input of the
    action expert (none / positive / negative), added to its tokens and zero-initialised on
    the starting policy (vla only); modulation: the same, and it also scales, shifts and
    gates every action-expert block (adaLN, as DiT conditions on a class; vla only)."""
    indicator_dropout: float = 0.3
    """Fraction of training samples shown without the indicator (learns the unconditioned
    policy, needed for guidance)."""
    beta: float = 1.0
    """Classifier-free guidance weight at deployment (1: plain conditioning on positive)."""
    replan_every: int = 5
    """Actions executed per sampled chunk."""
    eval_episodes: int = 128
    """Evaluation episodes per policy per round (no corrector)."""
    eval_interventions: bool = True
    """Also deploy every evaluated policy with the expert corrector on call (as in data
    collection) and report its intervention rate and success with corrections."""
    baselines: bool = True
    """Also train behaviour cloning on all data and filtered BC (successes only), same data."""
    videos: bool = True
    """Write rollout videos of the starting and final policies into the report."""
    seed: int = 0
    """Seed of everything (demonstrations, initialisation, deployment)."""
    resume: bool = False
    """Continue the run in --run-dir at the phase it was in."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        from anyskill.data.record import expert_envs

        if self.env not in expert_envs():  # the flywheel records and corrects with the expert
            raise unknown_name("env with a scripted expert (--env)", self.env, expert_envs())
        if self.labels not in ("predicate", "human"):
            raise ValueError(f"labels must be 'predicate' or 'human', got {self.labels!r}")
        for name in (
            "rounds",
            "episodes_per_round",
            "demos",
            "init_steps",
            "policy_steps",
            "batch_size",
            "eval_episodes",
            "replan_every",
            "advantage_n",
        ):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be >= 1, got {getattr(self, name)} "
                    f"(--{name.replace('_', '-')} takes a positive count)"
                )
        for name in ("lr", "demo_noise", "beta"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.indicator_dropout <= 1:
            raise ValueError(
                f"indicator_dropout must be in [0, 1], got {self.indicator_dropout} (a fraction)"
            )
        if not 0 < self.positive_fraction < 1:
            raise ValueError(f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        if self.advantage not in ("nstep", "chunk"):
            raise ValueError(f"advantage must be 'nstep' or 'chunk', got {self.advantage!r}")
        if self.indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {INDICATORS}, got {self.indicator!r}")
        if self.indicator != "prompt" and self.model.arch != "vla":
            raise ValueError(
                f"--indicator {self.indicator} needs --model.arch vla (got {self.model.arch!r}); "
                "use --indicator prompt with the MLP policies"
            )
        if self.model.arch == "mlp-bc":
            raise ValueError(
                "the flywheel needs a flow policy (--model.arch vla or mlp-flow): guidance "
                "combines conditioned and unconditioned velocities"
            )
