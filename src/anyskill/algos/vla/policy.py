"""A trained VLA (or baseline) run as a deployable :class:`~anyskill.policies.base.Policy`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.data import resize
from anyskill.algos.vla.model import Obs
from anyskill.algos.vla.train import chunk_fn_for, load_run
from anyskill.nets.transformer import tokenize
from anyskill.policies.base import (
    IMAGE,
    PROMPT,
    STATE,
    Batch,
    ChunkPolicy,
    InputSpec,
    ObservationError,
    PolicySpec,
)


class VLAPolicy(ChunkPolicy):
    """``infer(batch)`` -> ``[B, H, A]`` action chunks in env units, from raw observations:
    ``observation/state`` float32 ``[state_dim]``, ``observation/image`` uint8 ``[S, S, 3]``
    (any square size: resized to the model's), ``prompt`` str."""

    def __init__(self, run_dir: Path | str, num_steps: int | None = None, seed: int = 0):
        cfg, model, normalizer, params, meta = load_run(Path(run_dir))
        self.cfg, self.model, self.params, self.meta = cfg, model, params, meta
        m = cfg.model
        self.image_size = m.image_size
        inputs = [InputSpec(STATE, (m.state_dim,), "float32", "robot and scene state")]
        if m.num_cameras:
            inputs.append(
                InputSpec(IMAGE, (m.image_size, m.image_size, 3), "uint8", "top camera, RGB")
            )
        inputs.append(InputSpec(PROMPT, (), "str", "instruction", max_length=m.max_text_len))
        self.spec = PolicySpec(
            tuple(inputs),
            action_dim=m.action_dim,
            action_horizon=m.horizon,
            control_hz=10.0,
            name=f"anyskill-{m.arch}",
            # trained (and evaluated) replanning every `replan_every` actions; executing the
            # whole chunk open loop succeeds far less often (issue 22)
            execute_horizon=min(cfg.replan_every, m.horizon),
        )
        self._fn = jax.jit(chunk_fn_for(model, normalizer, num_steps))
        self.infer_seed = seed

    def to_obs(self, obs: Batch) -> Obs:
        """Model inputs of a :data:`Batch`: images resized to the model's size and repeated
        per camera, prompts tokenized."""
        m = self.cfg.model
        state = np.asarray(obs[STATE], np.float32)
        n = len(state)
        if m.num_cameras:
            images = np.asarray(obs[IMAGE], np.uint8)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ObservationError(IMAGE, f"shape {images.shape[1:]}, expected [S, S, 3] RGB")
            if images.shape[1:3] != (m.image_size, m.image_size):
                images = resize(images, m.image_size)
            images = images[:, None].repeat(m.num_cameras, axis=1)
        else:
            images = np.zeros((n, 0, 1, 1, 3), np.uint8)
        try:
            tokens, mask = tokenize([str(p) for p in obs[PROMPT]], m.max_text_len)
        except ValueError as e:
            raise ObservationError(PROMPT, str(e)) from None
        return Obs(
            state=jnp.asarray(state),
            images=jnp.asarray(images),
            tokens=jnp.asarray(tokens),
            text_mask=jnp.asarray(mask),
        )

    def act(self, obs: Batch, key) -> np.ndarray:
        """``[B, H, A]`` chunks in env units (no padding: a rollout's fixed batch compiles
        once; the server's ``infer`` pads to powers of two)."""
        return np.asarray(self._fn(self.params, key, self.to_obs(obs)), np.float32)
