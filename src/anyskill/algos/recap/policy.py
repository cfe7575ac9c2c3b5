"""RECAP's policies at deployment: the value function as a best-of-N scorer, and a flywheel
run directory as a servable :class:`~anyskill.policies.base.Policy`.

A flywheel run (``anyskill flywheel --run-dir RUN``) holds::

    RUN/config.json                the FlywheelConfig (indicator kind, guidance beta, value net)
    RUN/start/                     the starting policy: an ordinary ``anyskill train policy`` run
                                   (its model config and normaliser serve every method)
    RUN/policies/{recap,bc,filtered}.msgpack   each method's latest weights
    RUN/value.msgpack              the latest value function

``anyskill serve RUN`` serves RECAP as the flywheel deploys it: asked for "advantage:
positive" (the run's ``--indicator``: prompt words or the model input) with the run's
guidance ``beta``; options pick another method (``policy_name``: bc, filtered, start), another
``beta``, and best-of-N selection by the run's value function (``best_of``). The composition
is the flywheel's ``selection_chunk_fn`` in policy form: ``BestOfN(IndicatorConditioned(VLA))``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill import checkpoint, rundir
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.model import PolicyModel
from anyskill.algos.vla.policy import VLAPolicy
from anyskill.names import unknown_name
from anyskill.policies.base import Batch, Policy
from anyskill.policies.registry import PolicyLoadError, read_config_json, register_loader
from anyskill.policies.wrappers import BestOfN, IndicatorConditioned

#: what ``policy_name`` may name: the methods a flywheel run trains and the starting policy
FLYWHEEL_POLICIES = ("recap", "bc", "filtered", "awr", "start")


class ValueScorer:
    """``Q(s, chunk)`` of RECAP's distributional value function (its expectation), for
    :class:`~anyskill.policies.wrappers.BestOfN`: the observation is read as ``policy``
    reads it (tokenised prompt, resized images, normalised state) and the chunk normalised
    as the value function was trained on it."""

    def __init__(self, vf: ValueFunction, params: Any, policy: VLAPolicy):
        self.vf, self.params, self.policy = vf, params, policy
        norm = policy.normalizer

        def q(params, obs, chunks):
            return vf.expected(
                params, obs.replace(state=norm.state(obs.state)), norm.action(chunks)
            )

        self._q = jax.jit(q)

    def score(self, obs: Batch, chunks: np.ndarray) -> np.ndarray:
        """``[B]`` expected values of executing ``chunks`` ``[B, H, A]`` (env units) from
        ``obs`` (in ``[-1, 0]``: minus the expected fraction of the horizon to success)."""
        out = self._q(self.params, self.policy.to_obs(obs), jnp.asarray(chunks, jnp.float32))
        return np.asarray(out)


def is_flywheel_run(path: Path) -> bool:
    """A flywheel run directory: its ``config.json`` has the flywheel's rounds, indicator,
    model and value settings."""
    d = read_config_json(path)
    return d is not None and {"rounds", "indicator", "model", "value"} <= set(d)


def indicator_model(model: PolicyModel, params: Any, indicator: str) -> tuple[PolicyModel, Any]:
    """The model and weights every method of a RECAP run shares, from the starting policy's:
    unchanged when the indicator is words of the prompt; with ``indicator`` "embedding" or
    "modulation", the same VLA with an indicator input, zero-initialised (the starting
    policy's chunks are unchanged; the baselines never set it)."""
    if indicator == "prompt":
        return model, params
    model = PolicyModel(
        dataclasses.replace(
            model.cfg, indicator=True, indicator_modulation=indicator == "modulation"
        )
    )
    return model, model.with_indicator(params)


def load_flywheel_policy(
    path: Path | str,
    policy_name: str = "recap",
    beta: float | None = None,
    best_of: int = 1,
    seed: int = 0,
) -> Policy:
    """The policy ``policy_name`` of the flywheel run in ``path``, as the flywheel deploys it:
    RECAP conditioned on "advantage: positive" with guidance ``beta`` (default: the run's
    ``--beta``), the others plain. ``best_of > 1``: sample that many chunks per observation
    and keep the one the run's value function ranks highest. ``seed``: of the keys ``infer``
    draws."""
    # the flywheel is RECAP's driver and its run directory RECAP's checkpoint format; imported
    # here, not at module level, so that importing algos/ never imports flywheel/
    from anyskill.flywheel.artifacts import RunPaths
    from anyskill.flywheel.config import FlywheelConfig

    paths = RunPaths(Path(path))
    if policy_name not in FLYWHEEL_POLICIES:
        raise unknown_name("flywheel policy (--policy-name)", policy_name, FLYWHEEL_POLICIES)
    if beta is not None and policy_name != "recap":
        raise PolicyLoadError(
            f"--beta {beta}: guidance applies to the RECAP policy (trained with the advantage "
            f"indicator), not to {policy_name!r}; drop --beta or serve --policy-name recap"
        )
    if isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1:
        raise PolicyLoadError(f"--best-of must be an integer >= 1, got {best_of!r}")
    cfg = rundir.load_config(FlywheelConfig, paths.config)
    if not (paths.start / "checkpoint.msgpack").is_file():
        raise PolicyLoadError(
            f"{paths.root}: a flywheel run whose starting policy is not trained yet (no "
            f"{paths.start / 'checkpoint.msgpack'}); continue it with `anyskill flywheel "
            f"--run-dir {paths.root} --resume`"
        )
    base = VLAPolicy(paths.start, seed=seed)
    model, params = indicator_model(base.model, base.params, cfg.indicator)
    label = f"flywheel-{model.cfg.arch}-{policy_name}"
    if policy_name != "start":
        weights = paths.policy(policy_name)
        if not weights.is_file():
            if policy_name == "awr" and cfg.awr_beta is None:
                why = "the run trains AWR only with --awr-beta"
            elif policy_name in ("bc", "filtered") and not cfg.baselines:
                why = "the run trains the baselines only with --baselines"
            else:
                why = "the run has not finished its first policy phase"
            raise PolicyLoadError(
                f"{weights} does not exist ({why}); serve another with --policy-name "
                f"{' | '.join(FLYWHEEL_POLICIES)}"
            )
        params, meta = checkpoint.load(weights, params)
        if "round" in meta:
            label += f"-r{meta['round']}"
    policy: Policy = base.with_weights(params, model, name=label)
    if policy_name == "recap":
        kind = "prompt" if cfg.indicator == "prompt" else "input"
        policy = IndicatorConditioned(policy, kind, cfg.beta if beta is None else float(beta))
    if best_of > 1:
        if not paths.value.is_file():
            raise PolicyLoadError(
                f"--best-of {best_of} ranks chunks with the run's value function, and "
                f"{paths.value} does not exist yet (the run has not finished a value phase)"
            )
        vf = ValueFunction(model.cfg, cfg.value)
        # a template of shapes only: building real weights just to overwrite them compiles
        # every initialiser op
        value_params, _ = checkpoint.load(paths.value, jax.eval_shape(vf.init, jax.random.key(0)))
        scorer = ValueScorer(vf, value_params, base)  # base: how observations are read
        policy = BestOfN(policy, scorer, best_of)
    return policy


register_loader(
    "flywheel run (anyskill flywheel: recap, bc, filtered, start)",
    is_flywheel_run,
    load_flywheel_policy,
    options=("policy_name", "beta", "best_of", "seed"),
)
