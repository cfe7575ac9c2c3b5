"""Every place the flywheel runs a policy in the simulator: chunk functions (RECAP's
indicator, classifier-free guidance, value-ranked selection among N chunks) and the calls to
:func:`~anyskill.algos.vla.evaluate.make_rollout` (evaluation without a corrector) and
:func:`~anyskill.flywheel.deploy.make_deployer` (deployment with a corrector on call,
recording).

The phases (:mod:`anyskill.flywheel.phases`) only ask a :class:`Deployment` for a rollout or a
deployer; when rollouts become one ``rollout(env, policy, ...)`` and guidance / best-of-N
become policy wrappers, this module is the one to switch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.recap import advantage as A
from anyskill.algos.recap.value import ValueFunction
from anyskill.algos.vla.data import Normalizer
from anyskill.algos.vla.evaluate import make_rollout
from anyskill.algos.vla.model import INDICATOR_NONE, INDICATOR_POSITIVE, Obs, PolicyModel
from anyskill.algos.vla.train import chunk_fn_for
from anyskill.flywheel.config import FlywheelConfig
from anyskill.flywheel.deploy import CorrectorConfig, make_deployer
from anyskill.nets.transformer import tokenize

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


# ---- rollouts and deployers ------------------------------------------------------------------


@dataclasses.dataclass
class Deployment:
    """Rollouts and deployers of one run's policies (its env, model, indicator kind, β),
    each built and compiled once per configuration per process."""

    cfg: FlywheelConfig
    env: Any
    model: PolicyModel
    normalizer: Normalizer
    vf: ValueFunction
    human: Any = None
    """With ``--corrector.kind human``: the person (a ``flywheel.human.HumanCorrector``);
    None: the terminal's keyboard."""
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def prompt_suffix(self, conditioned: bool) -> str:
        """What a conditioned policy's prompts end with (nothing with an input indicator,
        which :func:`chunk_fn` sets)."""
        prompted = conditioned and self.cfg.indicator == "prompt"
        return ", " + A.INDICATOR_TEXT[True] if prompted else ""

    def chunk_fn(self, conditioned: bool, beta: float | None = None):
        """This run's chunk function (its indicator kind; β default: ``--beta``)."""
        b = self.cfg.beta if beta is None else beta
        return chunk_fn(self.model, self.normalizer, b, conditioned, self.cfg.indicator)

    def make_rollout(self, fn, episodes: int, prompt_suffix: str = ""):
        """A closed-loop rollout of ``episodes`` envs of this run's task mix with the chunk
        function ``fn`` (see :func:`anyskill.algos.vla.evaluate.make_rollout`)."""
        m = self.model.cfg
        return make_rollout(
            self.env,
            fn,
            episodes,
            self.cfg.replan_every,
            m.image_size,
            m.num_cameras,
            m.max_text_len,
            prompt_suffix,
        )

    def rollout(self, conditioned: bool):
        """The evaluation rollout (no corrector) ``roll(params, key) -> (success, _, steps)``,
        compiled once per process and reused for every policy with the same prompt format."""
        key = ("eval", conditioned)
        if key not in self._compiled:
            self._compiled[key] = self.make_rollout(
                self.chunk_fn(conditioned), self.cfg.eval_episodes, self.prompt_suffix(conditioned)
            )
        return self._compiled[key]

    def deployer(
        self, conditioned: bool, num_envs: int, corrector: CorrectorConfig, record_images: int = 0
    ):
        """``deploy(params, key, value_params=None, ...) -> episodes`` with ``corrector`` on
        call (see :func:`anyskill.flywheel.deploy.make_deployer`)."""
        key = ("deploy", conditioned, num_envs, corrector, record_images)
        if key not in self._compiled:
            m = self.model.cfg

            def value_fn(vp, obs):
                return self.vf.expected(vp, obs.replace(state=self.normalizer.state(obs.state)))

            self._compiled[key] = make_deployer(
                self.env,
                self.chunk_fn(conditioned),
                num_envs,
                self.cfg.replan_every,
                m.image_size,
                m.num_cameras,
                m.max_text_len,
                prompt_suffix=self.prompt_suffix(conditioned),
                corrector=corrector,
                value_fn=value_fn,
                record_images=record_images,
                human=self.human,
            )
        return self._compiled[key]

    def rollout_video(
        self, params, conditioned: bool, path: Path, episodes: int = 4, size: int = 96
    ) -> str:
        """Write a GIF of ``episodes`` rollouts of ``params`` side by side to ``path``;
        returns its caption (each episode's instruction and outcome, left to right)."""
        from anyskill.envs.render import save_video

        deploy = self.deployer(conditioned, episodes, CorrectorConfig(kind="none"), size)
        ep = deploy(params, jax.random.fold_in(jax.random.key(self.cfg.seed), 777))
        frames = ep.images  # [B, T, S, S, 3]
        t = int(ep.length.max())
        for i in range(episodes):  # hold each episode's last frame
            frames[i, ep.length[i] :] = frames[i, max(ep.length[i] - 1, 0)]
            if ep.success[i]:  # a green border once it succeeded
                frames[i, ep.length[i] :, :3] = (40, 200, 60)
                frames[i, ep.length[i] :, -3:] = (40, 200, 60)
        tiled = np.concatenate(list(frames[:, : t + 5]), axis=2)
        save_video(tiled, path, fps=float(self.env.control_hz))
        return "Left to right: " + "; ".join(
            f"“{text}” — {'success' if ok else 'failure'} after {n} steps"
            for text, ok, n in zip(ep.task, ep.success, ep.length, strict=True)
        )
