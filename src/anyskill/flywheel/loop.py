"""The deployment flywheel (π*0.6's RECAP) on the built-in tabletop tasks.

Set-up (once): record scripted demonstrations into ``RUN/data`` and train the starting policy
(``RUN/start``, an ordinary ``anyskill train policy`` run). Then each round:

1. **collect** — deploy the current RECAP policy (round 1: the starting policy) on
   ``episodes_per_round`` envs with a corrector on call; every episode goes into the episode
   store with ``source="autonomous"`` (or ``"corrected"`` when the corrector intervened),
   ``policy_version="recap-r{k}"``, per-frame
   ``intervention`` and the predicate's success label (or none, for ``--labels human``);
2. **label** — with human labels, wait until ``anyskill label RUN/data`` has labelled them;
3. **value** — train the distributional value function on everything collected so far
   (pretrained in round 1, fine-tuned after);
4. **advantage** — n-step advantages of every frame, a per-family threshold marking the best
   ``positive_fraction`` positive, corrected frames positive;
5. **policy** — fine-tune RECAP on all data with the advantage indicator (dropped 30 % of
   the time), as a learned input of the action expert or as words of the prompt; the baselines (behaviour cloning on all data, filtered BC on successful
   episodes) are fine-tuned from their previous round on the same data;
6. **evaluate** — every policy without a corrector: success, failure rate, time to success,
   throughput (successes per hour of robot time); the value function's early failure
   detection on this round's rollouts;
7. **report** — ``RUN/report.md`` with the tables, plots and videos so far.

``RUN/state.json`` records the last finished phase; a killed run restarts (``--resume``) at
the phase it was in, and every phase's outputs are written atomically. Every phase is
idempotent: a kill after a phase's artifact was written but before ``state.json`` recorded
it must not redo the work in a way that changes results — collect counts the episodes the
round already stored, the value function and the policies carry the round they were
trained in (a finished one is not trained again; the held-out detection only ever uses the
previous round's value function, on episodes it never saw), advantages, evaluation and the
report are recomputed from the same inputs. ``config.json`` and ``state.json`` are read
strictly (see :mod:`anyskill.rundir`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill import checkpoint, rundir
from anyskill.algos.recap import advantage as A
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.config import TrainConfig
from anyskill.algos.vla.data import TrainingData
from anyskill.algos.vla.evaluate import make_rollout
from anyskill.algos.vla.model import INDICATOR_NONE, INDICATOR_POSITIVE, Obs, PolicyModel
from anyskill.algos.vla.train import (
    TrainState,
    chunk_fn_for,
    load_run,
    make_optimizer,
    make_train_step,
)
from anyskill.data.reader import Dataset
from anyskill.data.writer import EpisodeWriter
from anyskill.envs.tabletop import tasks as T
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.deploy import make_deployer
from anyskill.nets.transformer import tokenize

PHASES = ("collect", "label", "value", "advantage", "policy", "evaluate", "report")
POLICIES = ("recap", "bc", "filtered")
#: how each method is named in reports
LABELS = {
    "start": "starting policy",
    "recap": "RECAP",
    "bc": "BC (all data)",
    "filtered": "filtered BC",
}


def log(msg: str) -> None:
    print(f"[flywheel {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class NeedsLabels(RuntimeError):
    """Raised when ``--labels human`` episodes are waiting for ``anyskill label``."""


# ---- chunk functions -------------------------------------------------------------------------


def suffix_length(max_text_len: int) -> int:
    """Words the "advantage: positive" indicator adds to a prompt."""
    plain, _ = tokenize("x", max_text_len)
    cond, _ = tokenize(A.prompt_with_indicator("x", True), max_text_len)
    return int((cond != 0).sum() - (plain != 0).sum())


def strip_suffix(tokens: jax.Array, k: int) -> jax.Array:
    """Drop the last ``k`` words of right-padded prompts (the indicator)."""
    n = (tokens != 0).sum(-1, keepdims=True)
    pos = jnp.arange(tokens.shape[-1])[None]
    return jnp.where(pos < n - k, tokens, 0)


def with_indicator(obs: Obs, value: int) -> Obs:
    """``obs`` with every sample's ``Obs.indicator`` set to ``value``."""
    return obs.replace(indicator=jnp.full(obs.state.shape[:1], value, jnp.int32))


def chunk_fn(
    model: PolicyModel,
    normalizer,
    beta: float = 1.0,
    conditioned: bool = False,
    indicator: str = "prompt",
):
    """``fn(params, key, obs) -> [B, H, A]`` env-unit chunks. ``conditioned``: ask for
    "advantage: positive" — ``indicator="prompt"``: the prompts already carry the words;
    ``"embedding"`` / ``"modulation"``: the indicator input is set to positive here.
    ``beta != 1`` applies classifier-free guidance against the same observation without the
    indicator."""
    plain = chunk_fn_for(model, normalizer)
    if not conditioned:
        return plain
    if indicator != "prompt":

        def split(obs: Obs):  # (asked for positive, no indicator): one shared prefix
            return with_indicator(obs, INDICATOR_POSITIVE), with_indicator(obs, INDICATOR_NONE)

    else:
        k = suffix_length(model.cfg.max_text_len)

        def split(obs: Obs):  # (prompt with the words, prompt without them)
            words = strip_suffix(obs.tokens, k)
            return obs, obs.replace(tokens=words, text_mask=words != 0)

    if beta == 1.0:
        return lambda params, key, obs: plain(params, key, split(obs)[0])

    def guided(params, key, obs: Obs):
        cond, unc = split(obs.replace(state=normalizer.state(obs.state)))
        return normalizer.unaction(model.sample_guided(params, key, cond, unc, beta))

    return guided


def selection_chunk_fn(
    model, normalizer, vf: ValueFunction, n: int, beta=1.0, conditioned=False, indicator="prompt"
):
    """Test-time compute: sample ``n`` chunks per observation and execute the one the value
    function ranks highest (``Q(s, chunk)``). ``params`` is ``(policy_params, value_params)``."""
    base = chunk_fn(model, normalizer, beta, conditioned, indicator)
    k = suffix_length(model.cfg.max_text_len)

    def fn(params, key, obs: Obs):
        pol, val = params
        b = obs.state.shape[0]
        tiled = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), obs)
        chunks = base(pol, key, tiled)  # [B*n, H, A]
        prompted = conditioned and indicator == "prompt"
        plain = strip_suffix(tiled.tokens, k) if prompted else tiled.tokens
        vobs = tiled.replace(
            state=normalizer.state(tiled.state), tokens=plain, text_mask=plain != 0
        )
        q = vf.expected(val, vobs, normalizer.action(chunks)).reshape(b, n)
        best = jnp.argmax(q, axis=1)
        return chunks.reshape(b, n, *chunks.shape[1:])[jnp.arange(b), best]

    return fn


# ---- evaluation metrics ----------------------------------------------------------------------


def outcome_metrics(success: np.ndarray, steps: np.ndarray, control_hz: float) -> dict:
    """Success and failure rate, mean time to success (s), throughput (successes per hour of
    robot time: episodes end at success, failures run to the time limit)."""
    success = np.asarray(success, bool)
    robot_hours = float(np.sum(steps)) / control_hz / 3600.0
    return {
        "success": float(success.mean()),
        "failure": float(1.0 - success.mean()),
        "time_to_success_s": float(steps[success].mean() / control_hz) if success.any() else None,
        "throughput_per_h": float(success.sum() / max(robot_hours, 1e-9)),
        "episodes": int(len(success)),
    }


# ---- the run ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Flywheel:
    cfg: FlywheelConfig
    human: Any = None
    """With ``--corrector.kind human``: the person (a ``flywheel.human.HumanCorrector``);
    None: the terminal's keyboard."""

    def __post_init__(self):
        self.dir = Path(self.cfg.run_dir)
        self.data_dir = self.dir / "data"
        self.state_path = self.dir / "state.json"
        self._compiled: dict = {}

    # -- bookkeeping -----------------------------------------------------------------------
    def load_state(self) -> dict:
        if self.state_path.exists():
            st = rundir.read_json(self.state_path)
            keys = {"round": int, "done": list, "rows": list, "detection": list}
            for k, kind in keys.items():
                if not isinstance(st, dict) or not isinstance(st.get(k), kind):
                    raise rundir.RunError(
                        f"{self.state_path}: field '{k}' must be "
                        f"{'an integer' if kind is int else 'a list'}, got "
                        f"{st.get(k) if isinstance(st, dict) else st!r}; this is not a flywheel "
                        "run state (restore it or start a new --run-dir)"
                    )
            return st
        return {"round": 1, "done": [], "rows": [], "detection": []}

    def save_state(self, st: dict) -> None:
        rundir.write_json(self.state_path, st)  # atomic; never NaN

    def _params_path(self, name: str) -> Path:
        return self.dir / "policies" / f"{name}.msgpack"

    def _save_params(self, name: str, params, rnd: int) -> None:
        checkpoint.save(self._params_path(name), params, {"round": rnd})

    def _load_params(self, name: str, template):
        return checkpoint.load(self._params_path(name), template)

    # -- set-up ----------------------------------------------------------------------------
    def setup(self) -> None:
        from anyskill.algos.vla.train import train
        from anyskill.data.record import record_expert

        c = self.cfg
        have = Dataset.open(self.data_dir).num_episodes if (self.data_dir / "meta").exists() else 0
        if have < c.demos:
            log(f"recording {c.demos - have} scripted demonstrations of {c.env} ...")
            record_expert(
                self.data_dir,
                c.env,
                episodes=c.demos - have,
                noise=c.demo_noise,
                seed=c.seed,
                progress=None,
            )
        start = self.dir / "start"
        ckpt = start / "checkpoint.msgpack"
        done = ckpt.exists() and checkpoint.load_meta(ckpt).get("step", 0) >= c.init_steps
        if not done:
            log(f"training the starting policy ({c.model.arch}, {c.init_steps} steps) ...")
            train(
                TrainConfig(
                    data=(self.data_dir,),
                    model=c.model,
                    run_dir=start,
                    steps=c.init_steps,
                    batch_size=c.batch_size,
                    lr=c.lr,
                    replan_every=c.replan_every,
                    eval_every=0,
                    eval_episodes=0,  # the flywheel evaluates it itself (round 0)
                    eval_split=("train",),
                    seed=c.seed,
                    resume=ckpt.exists(),
                    progress=c.progress,
                )
            )
        _, self.model, self.normalizer, self.start_params, _ = load_run(start)
        if c.indicator != "prompt":
            # one model for every method: the baselines never set the indicator input
            self.model = PolicyModel(
                dataclasses.replace(
                    self.model.cfg,
                    indicator=True,
                    indicator_modulation=c.indicator == "modulation",
                )
            )
            self.start_params = self.model.with_indicator(self.start_params)
        self.mcfg = self.model.cfg
        self.vf = ValueFunction(self.mcfg, c.value)
        from anyskill import envs

        self.env = envs.make(c.env, image_size=self.mcfg.image_size)
        self.horizon = int(self.env.episode_length)

    # -- pieces ----------------------------------------------------------------------------
    def policy_params(self, name: str):
        if self._params_path(name).exists():
            return self._load_params(name, self.start_params)[0]
        return self.start_params

    def deployer(self, conditioned: bool, num_envs: int, corrector, record_images=0):
        """A deployment function, built (and compiled) once per configuration per process."""
        key = ("deploy", conditioned, num_envs, corrector, record_images)
        if key not in self._compiled:
            self._compiled[key] = self._make_deployer(
                conditioned, num_envs, corrector, record_images
            )
        return self._compiled[key]

    def prompt_suffix(self, conditioned: bool) -> str:
        """What a conditioned policy's prompts end with (nothing with an input indicator,
        which :func:`chunk_fn` sets)."""
        prompted = conditioned and self.cfg.indicator == "prompt"
        return ", " + A.INDICATOR_TEXT[True] if prompted else ""

    def chunk_fn(self, conditioned: bool, beta: float | None = None):
        """This run's chunk function (its indicator kind; β default: ``--beta``)."""
        b = self.cfg.beta if beta is None else beta
        return chunk_fn(self.model, self.normalizer, b, conditioned, self.cfg.indicator)

    def rollout(self, conditioned: bool):
        """The evaluation rollout (no corrector), compiled once per process and reused for
        every policy with the same prompt format."""
        c = self.cfg
        key = ("eval", conditioned)
        if key not in self._compiled:
            self._compiled[key] = self.make_rollout(
                self.chunk_fn(conditioned), c.eval_episodes, self.prompt_suffix(conditioned)
            )
        return self._compiled[key]

    def make_rollout(self, fn, episodes: int, prompt_suffix: str = ""):
        """A closed-loop rollout of ``episodes`` envs of this run's task mix with the chunk
        function ``fn`` (see :func:`anyskill.algos.vla.evaluate.make_rollout`)."""
        return make_rollout(
            self.env,
            fn,
            episodes,
            self.cfg.replan_every,
            self.mcfg.image_size,
            self.mcfg.num_cameras,
            self.mcfg.max_text_len,
            prompt_suffix,
        )

    def _make_deployer(self, conditioned: bool, num_envs: int, corrector, record_images=0):
        c = self.cfg
        suffix = self.prompt_suffix(conditioned)
        fn = self.chunk_fn(conditioned)

        def value_fn(vp, obs):
            return self.vf.expected(vp, obs.replace(state=self.normalizer.state(obs.state)))

        return make_deployer(
            self.env,
            fn,
            num_envs,
            c.replan_every,
            self.mcfg.image_size,
            self.mcfg.num_cameras,
            self.mcfg.max_text_len,
            prompt_suffix=suffix,
            corrector=corrector,
            value_fn=value_fn,
            record_images=record_images,
            human=self.human,
        )

    def training_data(self, seed: int, **sampler_kw) -> TrainingData:
        ds = Dataset.open(self.data_dir)
        return TrainingData.build(
            ds, self.mcfg, self.cfg.batch_size, seed, normalizer=self.normalizer, **sampler_kw
        )

    def fit(self, params, data: TrainingData, steps: int, seed: int, desc: str):
        """Fine-tune ``params`` for ``steps`` steps (AdamW, warmup + cosine, EMA 0.99)."""
        from tqdm.auto import tqdm

        if ("fit", steps) not in self._compiled:
            tcfg = TrainConfig(steps=steps, lr=self.cfg.lr, warmup_steps=min(100, steps // 5 + 1))
            opt = make_optimizer(tcfg)
            self._compiled[("fit", steps)] = opt, make_train_step(self.model, opt, 0.99)
        opt, step_fn = self._compiled[("fit", steps)]
        ts = TrainState(params, params, opt.init(params), jnp.int32(0), jax.random.PRNGKey(seed))
        for _ in tqdm(range(steps), desc=desc, disable=not self.cfg.progress, leave=False):
            ts, _ = step_fn(ts, data.batch())
        return ts.ema

    def predict_values(
        self, value_params, data: TrainingData, frames=None, batch: int = 1024, q: bool = False
    ):
        """``V`` of ``frames`` (default: every frame of the store), in fixed-size batches;
        with ``q``, ``Q(s, chunk)`` with the action chunk that followed each frame."""
        frames = np.arange(data.ds.num_frames) if frames is None else np.asarray(frames)
        if ("values", q) not in self._compiled:
            self._compiled[("values", q)] = jax.jit(
                (lambda p, o, a: self.vf.expected(p, o, a)) if q else self.vf.expected
            )
        fn = self._compiled[("values", q)]
        out = np.zeros(len(frames), np.float32)
        for s in range(0, len(frames), batch):
            idx = frames[s : s + batch]
            full = np.concatenate([idx, np.full(batch - len(idx), idx[-1])])
            args = (data.obs_at(full),) + ((data.chunk_at(full),) if q else ())
            out[s : s + len(idx)] = np.asarray(fn(value_params, *args))[: len(idx)]
        return out

    def family_ids(self, ds: Dataset) -> np.ndarray:
        """Per-frame task family (the advantage threshold is per family)."""
        rows, _ = T.task_table(T.FAMILIES, "all")
        fam_of_text = {T.instruction(r): int(r[T.FAMILY]) for r in rows}
        fam_of_task = np.array([fam_of_text.get(t, -1) for t in ds.tasks] or [0])
        return fam_of_task[np.maximum(np.asarray(ds.columns["task_index"]), 0)]

    # -- phases ----------------------------------------------------------------------------
    def collect(self, rnd: int) -> None:
        c = self.cfg
        tag = f"recap-r{rnd - 1}"
        ds = Dataset.open(self.data_dir)
        have = int(np.sum(ds.episodes.policy_version == tag))
        if have >= c.episodes_per_round:
            return
        name = "recap" if rnd > 1 else "start"
        params = self.policy_params("recap") if rnd > 1 else self.start_params
        vp = self._value_params() if self.cfg.corrector.trigger == "value" else None
        log(f"round {rnd}: deploying the {LABELS[name]} on {c.episodes_per_round} episodes ...")
        deploy = self.deployer(rnd > 1, c.episodes_per_round, c.corrector)
        key = jax.random.fold_in(jax.random.key(c.seed), 1000 + rnd)
        writer = EpisodeWriter.open(self.data_dir)
        human = c.labels == "human"

        def store(ep, i):
            t = int(ep.length[i])
            writer.add_episode(
                {
                    "observation.state": ep.state[i, :t],
                    "observation.goal": ep.goal[i, :t],
                    "action": ep.action[i, :t],
                },
                task=ep.task[i],
                intervention=ep.intervention[i, :t],
                success=None if human else bool(ep.success[i]),
                source="corrected" if ep.intervention[i, :t].any() else "autonomous",
                policy_version=tag,
                episode_info={"round": rnd, "corrected": bool(ep.intervention[i, :t].any())},
            )

        with writer:  # releases the dataset's writer lock however the round ends
            if c.corrector.kind == "human":
                # a person's time is precious: every episode is stored the moment it ends, and
                # a resumed round continues after the episodes already stored
                deploy(params, key, vp, first=have, on_episode=lambda ep: store(ep, 0))
                return
            ep = deploy(params, key, vp)
            for i in range(have, c.episodes_per_round):
                store(ep, i)

    @property
    def value_path(self) -> Path:
        return self.dir / "value.msgpack"

    def _value_params(self):
        return self._value_params_and_meta()[0]

    def _value_params_and_meta(self):
        """The latest value function and its metadata (``round``: the round it was trained
        in, ``trained_on_episodes``: it saw the store's episodes ``[0, n)``); None, {} if
        there is none yet."""
        if not self.value_path.exists():
            return None, {}
        return checkpoint.load(self.value_path, self.vf.init(jax.random.key(0)))

    def train_value(self, rnd: int) -> None:
        c = self.cfg
        ds = Dataset.open(self.data_dir)
        prev, prev_meta = self._value_params_and_meta()
        if prev is not None and prev_meta.get("round") == rnd:
            # killed after value.msgpack was written but before state.json said so: this
            # round's value function is complete. Training again would fine-tune it twice, and
            # the held-out detection would use a function that has seen these episodes.
            log(f"round {rnd}: the value function of this round is already trained")
            return
        targets = self.value_targets(ds)
        if prev is None:
            params = self.vf.init(jax.random.key(c.seed + 7), self.start_params)
            steps = c.value.steps
        else:
            params, steps = prev, c.value.finetune_steps
        data = self.training_data(c.seed + 100 * rnd)
        if prev is not None:
            self.held_out_detection(rnd, prev, data, prev_meta)
        log(f"round {rnd}: training the value function ({steps} steps, {ds.num_frames} frames)")
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="value", disable=not c.progress, leave=False)
        params, losses = self.vf.train(params, data, targets, steps, c.seed + rnd, bar.update)
        bar.close()
        meta = {
            "round": rnd,
            "loss": float(losses[-50:].mean()),
            "trained_on_episodes": int(ds.num_episodes),
        }
        checkpoint.save(self.value_path, params, meta)

    def held_out_detection(
        self, rnd: int, value_params, data: TrainingData, value_meta: dict | None = None
    ) -> None:
        """Early failure detection of the previous round's value function on this round's
        rollouts, which it has never seen (uncorrected episodes only). ``value_meta``: the
        function's checkpoint metadata; episodes it was trained on (``trained_on_episodes``:
        the store's first n) are never scored, and a function of this round is refused."""
        ds = data.ds
        ep = ds.episodes
        meta = value_meta or {}
        if meta.get("round", 0) >= rnd:
            raise RuntimeError(
                f"held-out detection of round {rnd} asked of the value function of round "
                f"{meta['round']}, which has seen this round's episodes"
            )
        seen = int(meta.get("trained_on_episodes", 0))
        tag = np.flatnonzero(ep.policy_version == f"recap-r{rnd - 1}")
        iv = np.asarray(ds.columns["intervention"], bool)
        tag = [int(e) for e in tag if e >= seen and not iv[ep.start[e] : ep.stop[e]].any()]
        if not tag:
            return
        idx = np.concatenate([np.arange(ep.start[e], ep.stop[e]) for e in tag])
        values = self.predict_values(value_params, data, frames=idx)
        per_ep = np.split(values, np.cumsum(ep.length[tag])[:-1])
        rows = A.sweep_failure_detection(per_ep, ep.success[tag] > 0)
        out = {
            "round": rnd,
            "episodes": len(tag),
            "failures": int((ep.success[tag] <= 0).sum()),
            "rows": rows,
            # provenance of the held-out claim: the function's round, the episodes it was
            # trained on ([0, n) of the store) and the episodes scored (all >= n)
            "value_round": meta.get("round"),
            "value_trained_on_episodes": meta.get("trained_on_episodes"),
            "episode_ids": tag,
        }
        rundir.write_json(self.dir / f"detection-r{rnd}.json", out)

    def value_targets(self, ds: Dataset) -> np.ndarray:
        ep = ds.episodes
        unknown = np.flatnonzero(ep.success < 0)
        if len(unknown):
            raise NeedsLabels(
                f"{len(unknown)} episodes of {self.data_dir} have no success label; run "
                f"`anyskill label {self.data_dir}` and then resume with --resume"
            )
        return A.value_targets(ep.start, ep.stop, ep.success, self.horizon)

    def compute_advantages(self, rnd: int) -> None:
        c = self.cfg
        ds = Dataset.open(self.data_dir)
        ep = ds.episodes
        data = self.training_data(c.seed)
        vp = self._value_params()
        values = self.predict_values(vp, data)
        extra = {}
        if c.advantage == "chunk":
            extra["q"] = self.predict_values(vp, data, q=True)
            adv = (extra["q"] - values).astype(np.float32)
        else:
            adv = A.nstep_advantages(
                values, ep.start, ep.stop, ep.success, self.horizon, c.advantage_n
            )
        fam = self.family_ids(ds)
        thr = A.positive_threshold(adv, fam, c.positive_fraction)
        iv = np.asarray(ds.columns["intervention"], bool)
        ind = A.indicator(adv, fam, thr, iv)
        path = self.dir / f"advantage-r{rnd}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, values=values, advantages=adv, indicator=ind, family=fam, **extra)
        tmp.replace(path)

    def train_policies(self, rnd: int) -> None:
        c = self.cfg
        adv = np.load(self.dir / f"advantage-r{rnd}.npz")
        names = POLICIES if c.baselines else ("recap",)
        for i, name in enumerate(names):
            p = self._params_path(name)
            if p.exists() and checkpoint.load_meta(p).get("round") == rnd:
                continue
            seed = c.seed + 10 * rnd + i
            if name == "filtered":
                data = self.training_data(seed, success=True)
            else:
                data = self.training_data(seed)
            if name == "recap":
                data.set_indicator(
                    adv["indicator"],
                    A.prompt_with_indicator if c.indicator == "prompt" else None,
                    lambda rng, n: A.drop_indicator(rng, n, c.indicator_dropout),
                )
            log(f"round {rnd}: fine-tuning {LABELS[name]} ({c.policy_steps} steps)")
            params = self.fit(self.policy_params(name), data, c.policy_steps, seed, name)
            self._save_params(name, params, rnd)

    def evaluate(self, rnd: int, st: dict) -> None:
        c = self.cfg
        hz = float(self.env.control_hz)
        rows = []
        vp = self._value_params() if c.corrector.trigger == "value" else None

        def run(name, params, conditioned):
            roll = self.rollout(conditioned)
            key = jax.random.fold_in(jax.random.key(c.seed), 5000 + rnd)
            success, _, steps = (np.asarray(x) for x in roll(params, key))
            row = {"round": rnd, "method": name, **outcome_metrics(success, steps, hz)}
            return {**row, **self.assisted(params, conditioned, rnd, vp)}

        if rnd == 1 and not any(r["method"] == "start" for r in st["rows"]):
            rows.append({**run("start", self.start_params, False), "round": 0})
        names = POLICIES if c.baselines else ("recap",)
        for name in names:
            rows.append(run(name, self.policy_params(name), name == "recap"))
        ds = Dataset.open(self.data_dir)
        ep = ds.episodes
        tag = ep.policy_version == f"recap-r{rnd - 1}"
        iv = np.asarray(ds.columns["intervention"], bool)
        spans = list(zip(ep.start[tag], ep.stop[tag], strict=True))
        collect = {
            "round": rnd,
            "method": "deployment" if rnd > 1 else "deployment (start)",
            "intervention_rate": float(np.mean(np.concatenate([iv[s:t] for s, t in spans]))),
            "corrected_episodes": float(np.mean([iv[s:t].any() for s, t in spans])),
            **outcome_metrics(ep.success[tag] > 0, ep.length[tag], hz),
        }
        rows.append(collect)
        det = self.dir / f"detection-r{rnd}.json"
        st["rows"].extend(rows)
        if det.exists():
            st["detection"].append(rundir.read_json(det))
        for r in rows:
            if "success" in r:
                log(
                    f"round {r['round']} {r['method']:<20} success {r['success']:.2f} "
                    f"throughput {r['throughput_per_h']:.0f}/h"
                )

    def assisted(self, params, conditioned: bool, rnd: int, value_params=None) -> dict:
        """How much help a policy needs: deployed as in data collection (the scripted
        corrector watching the same fraction of envs, same trigger), on episodes that are the
        same for every method of a round — intervention rate (frames under correction), episodes
        corrected and success with corrections. Empty unless ``--eval-interventions`` and an
        expert corrector (a person is not asked to correct evaluation runs). ``value_params``:
        the value function, needed by ``--corrector.trigger value``."""
        c = self.cfg
        if not c.eval_interventions or c.corrector.kind != "expert":
            return {}
        deploy = self.deployer(conditioned, c.eval_episodes, c.corrector)
        key = jax.random.fold_in(jax.random.key(c.seed), 6000 + rnd)
        ep = deploy(params, key, value_params)
        live = np.arange(ep.intervention.shape[1])[None] < ep.length[:, None]
        return {
            "intervention_rate": float(ep.intervention[live].mean()),
            "corrected_episodes": float(ep.intervention.any(1).mean()),
            "assisted_success": float(np.mean(ep.success)),
        }

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> dict:
        c = self.cfg
        if c.resume and not (self.dir / "config.json").exists():
            raise ValueError(
                f"--resume: {self.dir} holds no flywheel run (no config.json); drop --resume "
                "to start one there, or give the --run-dir of the run to continue"
            )
        if self.state_path.exists() and not c.resume:
            raise ValueError(
                f"{self.dir} already holds a flywheel run; pass --resume to continue it or "
                "choose another --run-dir (nothing was overwritten)"
            )
        now = rundir.config_to_json(c)
        saved_path = self.dir / "config.json"
        if c.resume and saved_path.exists():
            # strict: a missing field, an unknown key or a wrong type is refused, not defaulted
            saved = rundir.config_to_json(rundir.load_config(FlywheelConfig, saved_path))
            default = rundir.config_to_json(FlywheelConfig())
            changed = config_changes(saved, now, default)
            if changed:
                raise ValueError(
                    f"{self.dir} was started with other settings: "
                    + "; ".join(
                        f"--{k.replace('_', '-')} was {a!r}, now {b!r}" for k, a, b in changed
                    )
                    + ". Resume with the run's settings (see its config.json; only "
                    + ", ".join(f"--{k.replace('_', '-')}" for k in RESUMABLE if k != "resume")
                    + " may change) or choose another --run-dir (nothing was overwritten)"
                )
        st = self.load_state()  # a broken state.json is refused before anything is written
        self.dir.mkdir(parents=True, exist_ok=True)
        rundir.write_json(saved_path, now)
        self.setup()
        while st["round"] <= c.rounds:
            rnd = st["round"]
            for phase in PHASES:
                if phase in st["done"]:
                    continue
                if phase == "collect":
                    self.collect(rnd)
                elif phase == "label":
                    self.value_targets(Dataset.open(self.data_dir))
                elif phase == "value":
                    self.train_value(rnd)
                elif phase == "advantage":
                    self.compute_advantages(rnd)
                elif phase == "policy":
                    self.train_policies(rnd)
                elif phase == "evaluate":
                    self.evaluate(rnd, st)
                elif phase == "report":
                    from anyskill.flywheel.report import write_report

                    write_report(self, st)
                st["done"].append(phase)
                self.save_state(st)
            st = {**st, "round": rnd + 1, "done": []}
            self.save_state(st)
        return st


#: settings a resumed run may change (run_dir: the same directory may be spelled differently)
RESUMABLE = ("rounds", "resume", "progress", "videos", "run_dir")


def config_changes(saved: dict, now: dict, default: dict, prefix: str = "") -> list:
    """``(flag, saved, now)`` of every setting that differs, except :data:`RESUMABLE` (nested
    configs as ``value.steps``); a setting an older run's config lacks counts as its
    ``default``."""
    out = []
    for k, v in now.items():
        if not prefix and k in RESUMABLE:
            continue
        was = saved.get(k, default.get(k))
        if isinstance(v, dict) and isinstance(was, dict):
            out += config_changes(was, v, default.get(k) or {}, f"{prefix}{k}.")
        elif was != v:
            out.append((prefix + k, was, v))
    return out


def saved_config(run_dir: Path) -> FlywheelConfig:
    """The configuration a flywheel run in ``run_dir`` was started with (its config.json,
    read strictly: see :func:`anyskill.rundir.load_config`)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} holds no flywheel run (no config.json)")
    cfg = rundir.load_config(FlywheelConfig, path)
    return dataclasses.replace(cfg, run_dir=Path(run_dir))


def run_flywheel(cfg: FlywheelConfig, human=None) -> dict:
    if cfg.corrector.kind == "human" and human is None:
        from anyskill.flywheel.human import require_terminal

        require_terminal(sys.stdin)
    return Flywheel(cfg, human).run()
