"""A trained VLA (or baseline) run as a deployable :class:`~anyskill.policies.base.Policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.algos.vla.data import resize
from anyskill.algos.vla.model import Obs
from anyskill.algos.vla.train import chunk_fn_for, load_run
from anyskill.nets.transformer import tokenize
from anyskill.policies.base import InputSpec, ObservationError, PolicySpec

STATE = "observation/state"
IMAGE = "observation/image"
PROMPT = "prompt"


class VLAPolicy:
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
        self._key = jax.random.key(seed)
        self._calls = 0

    def to_obs(self, batch: list[dict[str, Any]]) -> Obs:
        m = self.cfg.model
        state = np.stack([np.asarray(o[STATE], np.float32) for o in batch])
        if m.num_cameras:
            imgs = []
            for o in batch:
                img = np.asarray(o[IMAGE], np.uint8)
                if img.ndim != 3 or img.shape[-1] != 3:
                    raise ObservationError(IMAGE, f"shape {img.shape}, expected [S, S, 3] RGB")
                if img.shape[:2] != (m.image_size, m.image_size):
                    img = resize(img[None], m.image_size)[0]
                imgs.append(img)
            images = np.stack(imgs)[:, None].repeat(m.num_cameras, axis=1)
        else:
            images = np.zeros((len(batch), 0, 1, 1, 3), np.uint8)
        try:
            tokens, mask = tokenize([str(o[PROMPT]) for o in batch], m.max_text_len)
        except ValueError as e:
            raise ObservationError(PROMPT, str(e)) from None
        return Obs(
            state=jnp.asarray(state),
            images=jnp.asarray(images),
            tokens=jnp.asarray(tokens),
            text_mask=jnp.asarray(mask),
        )

    def infer(self, batch: list[dict[str, Any]]) -> np.ndarray:
        """Chunks for a batch; padded to the next power of two so at most log2(max batch)
        shapes are ever compiled (``warmup`` compiles them before serving)."""
        n = len(batch)
        padded = list(batch) + [batch[-1]] * ((1 << (n - 1).bit_length()) - n)
        obs = self.to_obs(padded)
        self._calls += 1
        key = jax.random.fold_in(self._key, self._calls)
        return np.asarray(self._fn(self.params, key, obs), np.float32)[:n]

    def warmup(self, max_batch: int) -> None:
        """Compile every padded batch size up to ``max_batch`` (called by the server)."""
        m = self.cfg.model
        dummy = {STATE: np.zeros(m.state_dim, np.float32), PROMPT: "warm up"}
        if m.num_cameras:
            dummy[IMAGE] = np.zeros((m.image_size, m.image_size, 3), np.uint8)
        b = 1
        while True:
            self.infer([dummy] * b)
            if b >= max_batch:
                break
            b *= 2
