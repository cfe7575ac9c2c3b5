"""Configuration of the deployment flywheel (RECAP) and of ``anyskill demo``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from anyskill.algos.recap.value import ValueConfig
from anyskill.algos.vla.config import ModelConfig
from anyskill.flywheel.deploy import CorrectorConfig
from anyskill.flywheel.robots import RobotsConfig
from anyskill.names import unknown_name
from anyskill.rundir import ADDED_LATER

#: ``--env robot``: no simulator at all — real robots only (``--deploy robots``), starting
#: from demonstrations recorded on them (``--demo-data``)
ROBOT_ENV = "robot"

#: how RECAP's policy is told the advantage (``--indicator``)
INDICATORS = ("prompt", "embedding", "modulation")


def flywheel_envs() -> list[str]:
    """Envs the flywheel runs on: every registered env with a scripted expert — the tabletop
    task mixes (``anyskill.envs.REGISTRY``) and the adapter envs whose
    :class:`~anyskill.envs.adapters.AdapterEnv` has one."""
    from anyskill.data.record import expert_envs
    from anyskill.envs.adapters import ADAPTER_ENVS

    adapters = [name for name, entry in ADAPTER_ENVS.items() if entry.expert is not None]
    return sorted([*expert_envs(), *adapters])


@dataclasses.dataclass(frozen=True)
class FleetConfig:
    """The flywheel on a Ray cluster (``--cluster``): deploy workers feed one learner."""

    workers: int = 2
    """Deploy workers (Ray actors): with --deploy sim each a batch of vectorised simulated
    envs; with --deploy robots each serves one robot (worker i on --robots.port + i)."""
    envs_per_worker: int = 16
    """Episodes a worker runs at once (one vectorised deployment; the unit a killed worker
    loses). --deploy robots: the most episodes a robot worker hands over at once."""
    episodes: int = 256
    """Episodes to collect in all (the run's budget; --resume continues towards it)."""
    publish_every: int = 200
    """Learner updates (policy gradient steps) between published policy versions."""
    min_new_episodes: int = 16
    """New episodes the learner waits for before its next cycle (value function,
    advantages, --fleet.publish-every policy updates, publish)."""
    worker_cpus: float = 1.0
    """CPUs Ray reserves for each worker (placement; fractions share a core)."""
    worker_threads: int = 1
    """XLA/BLAS threads of each worker process (0: the library defaults), so workers and
    the learner do not fight over cores."""
    robot_resource: str | None = None
    """Place workers only on nodes that offer this custom Ray resource (e.g. `robot`, started
    with `ray start --resources '{"robot": 1}'`). None: anywhere."""
    pull_timeout_s: float = 5.0
    """How long a worker waits for the parameter server before it keeps running its last
    version (and says so)."""
    status_every_s: float = 10.0
    """Seconds between status lines (per-worker episodes/s, policy-version lag)."""
    local_cpus: int | None = None
    """`--cluster local`: CPUs the local Ray offers (None: the machine's)."""
    robot_wait_s: float = dataclasses.field(default=30.0, metadata={ADDED_LATER: "robot workers"})
    """--deploy robots: how long a robot worker waits for its robot's next episode before it
    hands over what it has (possibly nothing) and checks for a newer policy version."""
    sim_robots: bool = dataclasses.field(default=False, metadata={ADDED_LATER: "robot workers"})
    """--deploy robots: each robot worker also starts a simulated robot of --env (the real
    robot-side runtime, `anyskill run-robot --upload`, over loopback) that drives its served
    policy — the robot path end to end without robots. Off: real robots connect themselves."""

    def __post_init__(self):
        for name in ("workers", "envs_per_worker", "episodes", "publish_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"fleet.{name} must be >= 1, got {getattr(self, name)} "
                    f"(--fleet.{name.replace('_', '-')} takes a positive count)"
                )
        if self.min_new_episodes < 0 or self.worker_threads < 0:
            raise ValueError(
                f"fleet.min_new_episodes and fleet.worker_threads must be >= 0, got "
                f"{self.min_new_episodes} and {self.worker_threads}"
            )
        for name in ("worker_cpus", "pull_timeout_s", "status_every_s", "robot_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"fleet.{name} must be > 0, got {getattr(self, name)}")
        if self.local_cpus is not None and self.local_cpus < 1:
            raise ValueError(f"fleet.local_cpus must be >= 1 or None, got {self.local_cpus}")


@dataclasses.dataclass(frozen=True)
class FlywheelConfig:
    """Deploy, label, correct, learn a value, retrain conditioned on advantage — K rounds."""

    env: str = "tabletop-reach"
    """Env to deploy on: a tabletop task mix (tabletop-reach, -push, -gather, -sort, or
    tabletop: all families; see `anyskill envs`) or an adapter env with a scripted expert
    (gym-pusht, gym-hil-panda). The expert records the demonstrations and corrects. `robot`:
    no simulator — real robots only (with --deploy robots and --demo-data recorded on them;
    the policies are measured by their robot deployments)."""
    run_dir: Path = Path("runs/flywheel")
    """Everything of the run: data/ (episode store), checkpoints, report.md, plots, videos."""
    rounds: int = 3
    """Flywheel rounds (deploy -> value -> advantages -> retrain -> evaluate)."""
    demos: int = 100
    """Scripted-expert demonstrations the starting policy is trained on."""
    demo_noise: float = 0.1
    """Action noise of the demonstrator."""
    demo_data: Path | None = dataclasses.field(default=None, metadata={ADDED_LATER: "issue 23"})
    """A dataset of demonstrations to start from instead of recording the scripted expert's
    (an episode store in the LeRobot v3.0 format with the features the env's rollouts record:
    observation.state, observation.goal if the env has one, action). It is copied into the
    run's data/ (the original is never written to) and --demos is ignored. With it the
    flywheel also runs on an env without a scripted expert (then --corrector.kind none)."""
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
    deploy: Literal["sim", "robots"] = dataclasses.field(
        default="sim", metadata={ADDED_LATER: "issue 23"}
    )
    """Where each round's episodes come from. sim: the policy is deployed in the simulator
    with the corrector on call. robots: the round's policy is served (--robots.host/port) and
    robots (`anyskill run-robot --upload`, or any openpi client with an EpisodeUploader) run
    episodes against it and upload each finished one, with a person's takeovers flagged; the
    round ends after --episodes-per-round episodes or on `anyskill flywheel end-round RUN`.
    Demonstrations and evaluation still use the simulator --env."""
    robots: RobotsConfig = dataclasses.field(
        default=RobotsConfig(), metadata={ADDED_LATER: "issue 23"}
    )
    labels: str = "predicate"
    """predicate: success from the task's predicate; human: episodes are stored unlabelled and
    the loop waits for `anyskill label RUN_DIR/data`."""
    advantage: Literal["nstep", "chunk", "chunk-nstep"] = "nstep"
    """How advantages are computed from the value function. nstep: ``A = sum of n step costs
    + V(s_t+n) - V(s_t)`` (π*0.6); chunk: ``A = Q(s_t, a_t..t+H) - V(s_t)``, the value
    function's estimate with the chunk of H actions that followed (the chunk the policy
    predicts) against its estimate without it, both fitted to Monte-Carlo returns;
    chunk-nstep: the same with Q and V then fitted to n-step backups (n = --advantage-n step
    costs + V(s_t+n), V from the round's Monte-Carlo fit; a further --value.finetune-steps
    steps each round)."""
    advantage_n: int = 10
    """n of the n-step advantage (--advantage nstep)."""
    advantage_center: bool = dataclasses.field(default=False, metadata={ADDED_LATER: "issue 24"})
    """Centre the advantages within each episode before the per-family threshold, so that
    "positive" marks an episode's better actions rather than the frames of its better
    episodes."""
    positive_fraction: float = 0.3
    """Fraction of each task family's frames marked "advantage: positive"."""
    variety: float = dataclasses.field(default=0.0, metadata={ADDED_LATER: "issue 24"})
    """Fraction of the deployed policy's chunks varied while collecting (action contrast at
    the same states, so labels can say which action was better; see
    anyskill.algos.recap.variety): scaled by u ~ U[--variety-slow, 1] and shifted by a constant
    offset of std --variety-noise. 0: none (evaluation is never varied)."""
    variety_slow: float = dataclasses.field(default=0.5, metadata={ADDED_LATER: "issue 24"})
    """Smallest speed scale of a varied chunk."""
    variety_noise: float = dataclasses.field(default=0.0, metadata={ADDED_LATER: "issue 24"})
    """Std of a varied chunk's constant action offset (env units)."""
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
    max_steps: int | None = None
    """Steps after which an episode ends (the value targets' horizon). Default: the env's own
    episode length (the tabletop's per task mix; gym-pusht 300)."""
    eval_episodes: int = 128
    """Evaluation episodes per policy per round (no corrector)."""
    eval_same_episodes: bool = dataclasses.field(default=False, metadata={ADDED_LATER: "issue 24"})
    """Evaluate every round (and the starting policy) on the same --eval-episodes episodes,
    so round-over-round changes are paired comparisons (the demo does; off: each round
    draws new ones, as runs before this setting did)."""
    eval_interventions: bool = True
    """Also deploy every evaluated policy with the expert corrector on call (as in data
    collection) and report its intervention rate and success with corrections."""
    baselines: bool = True
    """Also train behaviour cloning on all data and filtered BC (successes only), same data
    (the rounds of one process; a fleet, --cluster, trains only --deploy-with)."""
    awr_beta: float | None = dataclasses.field(default=None, metadata={ADDED_LATER: "issue 24"})
    """Also train advantage-weighted regression on all data (same data, the round's
    advantages): the flow loss weighted per frame by min(exp(A / awr_beta), --awr-max-weight),
    each batch's weights normalised to mean 1. None: not trained."""
    awr_max_weight: float = dataclasses.field(default=20.0, metadata={ADDED_LATER: "issue 24"})
    """Largest AWR weight (clips exp(A / awr_beta))."""
    awr_data: Literal["all", "successes"] = dataclasses.field(
        default="all", metadata={ADDED_LATER: "issue 24"}
    )
    """The frames AWR trains on: all (every episode, weighted by advantage) or successes
    (filtered BC's data — demonstrations and successful episodes — weighted by advantage:
    on push, failed episodes still hold a tenth of AWR's weight; BENCHMARKS.md)."""
    negatives_unconditioned: bool = dataclasses.field(
        default=False, metadata={ADDED_LATER: "issue 24"}
    )
    """Classifier-free style RECAP: negative frames are trained without the indicator (the
    unconditioned policy), positive ones with it (and dropped --indicator-dropout of the
    time), so guidance contrasts the positive branch with the unconditioned policy."""
    diagnose: bool = dataclasses.field(default=False, metadata={ADDED_LATER: "issue 24"})
    """After each round's advantages, measure how much action information its labels carry
    (`anyskill diagnose labels`: held-out AUC of the label from (state, chunk) vs the state
    alone; ~20 s per round) and explain the results with it in the report."""
    split_takeovers: int = dataclasses.field(default=0, metadata={ADDED_LATER: "issue 24"})
    """Human-in-the-loop split: the up to N autonomous frames before each takeover are
    labelled as the failure they were heading to (negative, lowest advantage); the takeover
    frames stay positive. 0: off (they are labelled by their advantage like any frame)."""
    deploy_with: Literal["recap", "awr"] = dataclasses.field(
        default="recap", metadata={ADDED_LATER: "issue 24"}
    )
    """Which method's policy collects rounds 2 on (round 1 deploys the starting policy):
    RECAP (conditioned on "advantage: positive", guidance --beta) or AWR (needs --awr-beta).
    Every method still trains on the same data."""
    videos: bool = True
    """Write rollout videos of the starting and final policies into the report."""
    cluster: str | None = dataclasses.field(default=None, metadata={ADDED_LATER: "issue 26"})
    """Run on Ray (pip install -e '.[cluster]'): `local` starts a Ray on loopback here, an
    address (`HOST:6379`, or `auto`) joins an existing cluster. Deploy workers then collect
    continuously while one learner trains and publishes policy versions (--fleet.*;
    docs/cluster.md). None: the rounds of this process (deploy, then train)."""
    fleet: FleetConfig = dataclasses.field(
        default_factory=FleetConfig, metadata={ADDED_LATER: "issue 26"}
    )
    seed: int = 0
    """Seed of everything (demonstrations, initialisation, deployment)."""
    resume: bool = False
    """Continue the run in --run-dir at the phase it was in."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        if self.env == ROBOT_ENV:
            self._check_robot_only()
        elif self.env not in flywheel_envs():  # the expert records the demonstrations
            from anyskill.envs.adapters import ADAPTER_ENVS, env_names

            if self.env not in env_names():
                raise unknown_name("env (--env)", self.env, env_names())
            if self.demo_data is None:
                raise ValueError(
                    f"--env {self.env} has no scripted expert to record the starting policy's "
                    f"demonstrations: give them with --demo-data DATASET, or run on "
                    f"{', '.join(flywheel_envs())}"
                )
            if self.env not in ADAPTER_ENVS:
                raise ValueError(
                    f"--env {self.env} is not a flywheel env (the flywheel deploys on the "
                    f"tabletop task mixes and on adapter envs: {', '.join(sorted(ADAPTER_ENVS))})"
                )
            if self.corrector.kind == "expert":
                raise ValueError(
                    f"--env {self.env} has no scripted expert to correct the deployed policy: "
                    "run it with --corrector.kind none"
                )
        if self.deploy not in ("sim", "robots"):
            raise ValueError(f"deploy must be 'sim' or 'robots', got {self.deploy!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(
                f"max_steps must be >= 1 or None (the env's episode length), got {self.max_steps}"
            )
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
        if not 0 <= self.variety <= 1 or not 0 <= self.variety_slow <= 1:
            raise ValueError(
                f"variety and variety_slow must be in [0, 1], got {self.variety} and "
                f"{self.variety_slow}"
            )
        if not self.variety_noise >= 0:
            raise ValueError(f"variety_noise must be >= 0, got {self.variety_noise}")
        if self.awr_beta is not None and not self.awr_beta > 0:
            raise ValueError(
                f"awr_beta must be > 0 (the temperature of exp(A / beta)) or None (no AWR), "
                f"got {self.awr_beta}"
            )
        if self.replan_every > self.model.horizon:
            raise ValueError(
                f"replan_every must be in 1..{self.model.horizon} (the policy's action horizon, "
                f"--model.horizon), got {self.replan_every}"
            )
        if self.split_takeovers < 0:
            raise ValueError(
                f"split_takeovers must be >= 0 frames (0: off), got {self.split_takeovers}"
            )
        if self.cluster is not None:
            self._check_cluster()
        if self.deploy_with not in ("recap", "awr"):
            raise ValueError(f"deploy_with must be 'recap' or 'awr', got {self.deploy_with!r}")
        if self.deploy_with == "awr" and self.awr_beta is None:
            raise ValueError("--deploy-with awr needs AWR trained: give --awr-beta (e.g. 0.05)")
        if self.awr_data not in ("all", "successes"):
            raise ValueError(f"awr_data must be 'all' or 'successes', got {self.awr_data!r}")
        if not self.awr_max_weight > 0:
            raise ValueError(f"awr_max_weight must be > 0, got {self.awr_max_weight}")
        if not 0 < self.positive_fraction < 1:
            raise ValueError(f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        if self.advantage not in ("nstep", "chunk", "chunk-nstep"):
            raise ValueError(
                f"advantage must be 'nstep', 'chunk' or 'chunk-nstep', got {self.advantage!r}"
            )
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

    def _check_cluster(self) -> None:
        """``--cluster``: what the fleet does not (yet) run, named in one error."""
        wrong = []
        if not self.cluster.strip():
            wrong.append("--cluster local or --cluster HOST:PORT (got an empty address)")
        if self.fleet.sim_robots and (self.deploy != "robots" or not self.simulated):
            wrong.append(
                "--deploy robots and a simulated --env for --fleet.sim-robots (simulated "
                "robots run the env's tasks)"
            )
        # what only the rounds of one process use: refused rather than silently ignored
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, flag in (
            ("rounds", "--rounds"),
            ("episodes_per_round", "--episodes-per-round"),
        ):
            if getattr(self, name) != defaults[name]:
                wrong.append(
                    f"no {flag} (a fleet has no rounds: it collects --fleet.episodes while the "
                    f"learner publishes a version every --fleet.publish-every updates; got "
                    f"{flag} {getattr(self, name)})"
                )
        if self.corrector.kind == "human":
            wrong.append("--corrector.kind expert or none (no person at each worker)")
        if self.corrector.trigger == "value":
            wrong.append("--corrector.trigger stall (workers carry no value function)")
        if self.labels != "predicate":
            wrong.append("--labels predicate (the learner cannot wait for human labels)")
        if wrong:
            raise ValueError("--cluster " + repr(self.cluster) + " needs " + "; ".join(wrong))

    def _check_robot_only(self) -> None:
        """``--env robot``: what a run without any simulator needs, named in one error."""
        wrong = []
        if self.deploy != "robots":
            wrong.append("--deploy robots (episodes come from the robots)")
        if self.demo_data is None:
            wrong.append("--demo-data DATASET (demonstrations recorded on the robots)")
        if self.corrector.kind != "none":
            wrong.append(
                "--corrector.kind none (a person takes over on the robot; the runtime flags "
                "those frames as interventions)"
            )
        if wrong:
            raise ValueError("--env robot runs without a simulator and needs " + "; ".join(wrong))

    @property
    def simulated(self) -> bool:
        """The run has a simulator (every env but ``robot``): policies are evaluated in it."""
        return self.env != ROBOT_ENV
