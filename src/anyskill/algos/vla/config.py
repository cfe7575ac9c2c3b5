"""Configs of the generalist policy (π0-style VLA) and its MLP baselines."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from anyskill.rundir import ADDED_LATER

ARCHS = ("vla", "mlp-bc", "mlp-flow")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. The CPU default is ~1.4M parameters; every size is a flag."""

    arch: Literal["vla", "mlp-bc", "mlp-flow"] = "vla"
    """vla: π0-style transformer + flow-matching action expert; mlp-bc: MLP regressing the
    chunk; mlp-flow: MLP flow-matching policy (both baselines read the same inputs)."""
    horizon: int = 10
    """H: actions per chunk."""
    num_steps: int = 10
    """Euler steps when sampling a chunk."""
    image_size: int = 32
    """Camera images are resized to this (square) before the encoder (32: 16 patch tokens,
    enough for the tabletop's coloured shapes and cheap on a CPU)."""
    patch_size: int = 8
    """Side of an image patch (one prefix token per patch)."""
    width: int = 128
    """Prefix (backbone) width."""
    depth: int = 4
    """Transformer blocks (MLP baselines: hidden layers)."""
    heads: int = 2
    """Attention heads (shared by the prefix and the action expert). 2 rather than 4 keeps a
    50-action chunk under 20 ms on 2 CPU cores (see BENCHMARKS.md)."""
    head_dim: int = 32
    """Width of one attention head."""
    action_width: int = 64
    """Action expert width (its own weights; attention shared with the prefix)."""
    max_text_len: int = 16
    """Longest instruction, in words."""
    mlp_width: int = 512
    """Hidden width of the MLP baselines."""
    entity_tokens: bool = True
    """VLA: one prefix token per entity of the state (the tabletop's pusher, objects, zones)
    when the data declares that layout (``observation.state``'s ``anyskill.state_tokens`` in
    meta/info.json, see :mod:`anyskill.data.state_layout`, or the recording env's
    ``state_tokens``); without a declaration, or with this off, the whole state is one token
    (a linear projection)."""
    indicator: bool = False
    """VLA: a learned advantage-indicator input (none / positive / negative, RECAP) added to
    every action-expert token, like the flow time; off for plain imitation. The flywheel
    turns it on (``--indicator embedding`` or ``modulation``) and adds it, zero-initialised, to the starting
    policy."""
    indicator_modulation: bool = False
    """VLA with ``indicator``: the indicator also scales and shifts every action-expert
    block's norms and gates its residual branches (adaLN, as DiT conditions on a class),
    zero-initialised; a stronger input than one added vector (``--indicator modulation``)."""
    max_delay: int = dataclasses.field(default=0, metadata={ADDED_LATER: "issue 25"})
    """VLA: delay-aware training (real-time chunking learned, not only guided): each
    training chunk's first d ~ U{0..max_delay} actions are given clean (flow time 0 on those
    tokens) and left out of the loss, so at inference the actions a robot has already
    committed to are an input and the model continues them. 0: off (inference-time
    guided inpainting still works on any flow model)."""
    subtasks: bool = dataclasses.field(default=False, metadata={ADDED_LATER: "issue 27"})
    """VLA: π0.5-style high-level inference. A subtask head on its own small trunk
    (knowledge insulation: the flow loss never reaches it, its loss never reaches the action
    expert) predicts the next subtask as a structured choice — "the task as instructed" or
    "the subtask about object slot k" (a pointer over the object entity tokens) — trained with
    cross-entropy on the dataset's subtask labels (``meta/anyskill/subtasks.parquet``;
    refused without them). The action expert reads the subtask's text as its prompt
    (teacher-forced in training, predicted at inference; see
    :mod:`anyskill.algos.vla.subtasks`). Off: the flat model, bit for bit."""
    subtask_width: int = dataclasses.field(default=64, metadata={ADDED_LATER: "issue 27"})
    """Width of the subtask head's trunk (with ``subtasks``)."""
    subtask_depth: int = dataclasses.field(default=2, metadata={ADDED_LATER: "issue 27"})
    """Transformer blocks of the subtask head's trunk (with ``subtasks``)."""
    subtask_weight: float = dataclasses.field(default=1.0, metadata={ADDED_LATER: "issue 27"})
    """Weight of the subtask cross-entropy beside the flow loss (the two train disjoint
    parameters, so it only matters through the shared optimizer's clipping)."""
    # Filled from the data (the LeRobot features it declares), not by hand:
    subtask_slots: tuple[int, ...] = dataclasses.field(
        default=(), metadata={ADDED_LATER: "issue 27"}
    )
    """With ``subtasks``: indices into ``state_tokens`` of the entities a subtask can be
    about (the tabletop's object slots); subtask class ``1 + i`` is slot ``i``'s subtask,
    class 0 the task as instructed."""
    state_dim: int = 0
    """Features of ``observation.state`` (any robot's proprioception, any size)."""
    action_dim: int = 0
    """Features of ``action``."""
    num_cameras: int = 1
    """Cameras read; ``len(cameras)`` whenever ``cameras`` names them."""
    cameras: tuple[str, ...] = dataclasses.field(default=(), metadata={ADDED_LATER: "issue 23"})
    """The dataset's camera features (``observation.images.*``, any size: resized to
    ``image_size``) the model reads, in this order; empty: all of them, in the dataset's
    order. The policy reads the first as ``observation/image`` and the others under their
    feature names."""
    state_tokens: tuple[tuple[int, int, int], ...] = ()
    """``(start, stop, kind)`` slices of the state, one prefix token each (same kind, same
    projection); empty: the whole state is one token."""
    state_token_words: tuple[tuple[tuple[int, tuple[str, ...]], ...], ...] = ()
    """Per state token, the words that name it, as ``(offset, words)``: offset -1: the token
    always carries these words (a red zone: ``(-1, ("red",))``); otherwise the token's
    features ``[offset, offset + len(words))`` are a one-hot over ``words`` (an object's
    colour). The named words' text embeddings are added to the token (grounding: the
    instruction's "red" and the red things share an embedding)."""

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        for name in ("horizon", "num_steps", "image_size", "patch_size", "width", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.indicator and self.arch != "vla":
            raise ValueError(
                f"indicator=True needs arch 'vla' (got {self.arch!r}); the MLP baselines take "
                "the indicator in the prompt instead"
            )
        if self.max_delay and self.arch != "vla":
            raise ValueError(
                f"max_delay={self.max_delay} (delay-aware training) needs arch 'vla', got "
                f"{self.arch!r}: only the VLA's action expert takes a flow time per action"
            )
        if not 0 <= self.max_delay < self.horizon:
            raise ValueError(
                f"max_delay must be in 0..horizon-1 ({self.horizon - 1}), got {self.max_delay}"
            )
        if self.subtasks and self.arch != "vla":
            raise ValueError(
                f"subtasks=True needs arch 'vla', got {self.arch!r}: the subtask head points "
                "at the VLA's entity tokens"
            )
        if self.subtasks and (self.subtask_width < 1 or self.subtask_depth < 1):
            raise ValueError(
                f"subtask_width and subtask_depth must be >= 1, got {self.subtask_width} and "
                f"{self.subtask_depth}"
            )
        if not self.subtask_weight >= 0:
            raise ValueError(f"subtask_weight must be >= 0, got {self.subtask_weight}")
        for i in self.subtask_slots:
            if not 0 <= i < len(self.state_tokens):
                raise ValueError(
                    f"subtask_slots names state token {i}, but there are "
                    f"{len(self.state_tokens)} state tokens"
                )
        if self.indicator_modulation and not self.indicator:
            raise ValueError("indicator_modulation=True needs indicator=True")
        if self.cameras:
            # named cameras decide the count (so `--model.cameras A B` needs no num_cameras)
            object.__setattr__(self, "num_cameras", len(self.cameras))
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras names a camera twice: {list(self.cameras)}")
        if self.state_token_words and len(self.state_token_words) != len(self.state_tokens):
            raise ValueError(
                f"state_token_words has {len(self.state_token_words)} entries, state_tokens "
                f"{len(self.state_tokens)}: one per token (or none)"
            )
        for a, b, _ in self.state_tokens:
            if not 0 <= a < b <= max(self.state_dim, b):
                raise ValueError(f"state token slice [{a}, {b}) is empty or out of range")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_subtask_classes(self) -> int:
        """Classes of the subtask head: the task as instructed, then one per subtask slot."""
        return 1 + len(self.subtask_slots)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Multi-task training from episode stores."""

    data: tuple[Path, ...] = ()
    """Episode store (any LeRobot v3.0 dataset: ``observation.state``, ``action``, the cameras
    ``observation.images.*`` and the task, any robot) to train on."""
    model: ModelConfig = ModelConfig()
    run_dir: Path | None = None
    """Where config, metrics, checkpoints, curves go (default runs/policy-ARCH-sSEED)."""
    steps: int = 3000
    """Gradient steps (the run also stops at --time-budget-min)."""
    time_budget_min: float = 0.0
    """Stop once this many minutes were spent in training steps (0: no limit). Counted: the
    wall-clock time of gradient steps (sampling a batch and updating), summed over every
    session of the run — it is saved in the checkpoint (``train_seconds``), so a resumed run
    continues the same budget instead of starting a new one. Not counted: each session's
    first step (it compiles), evaluation, checkpoints, plots and loading the data. Checked
    after every step: the run stops at the first step past the budget, with an evaluation
    and a checkpoint."""
    batch_size: int = 64
    """Samples (observation + action chunk) per gradient step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warmup, then cosine decay to 5 %)."""
    warmup_steps: int = 200
    """Steps of linear learning-rate warmup."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Global-norm gradient clipping."""
    ema: float = 0.999
    """EMA decay of the weights used for evaluation and deployment."""
    replan_every: int = 5
    """Execute this many actions of each chunk before sampling the next."""
    eval_every: int = 500
    """Gradient steps between evaluations in the simulator (0: only at the end)."""
    eval_episodes: int = 32
    """Episodes per task family per evaluation (0: no evaluation)."""
    eval_split: tuple[str, ...] = ("train", "heldout")
    """Task splits evaluated: train (seen) and heldout (unseen combinations, phrasings)."""
    seed: int = 0
    """Seed of initialisation, batch sampling and evaluation."""
    resume: bool = False
    """Continue the run in --run-dir from its last checkpoint."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self):
        for name in ("steps", "batch_size", "replan_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, fix in (
            ("lr", "a learning rate is a step size, e.g. 3e-4"),
            ("warmup_steps", "0 for no warmup"),
            ("weight_decay", "0 for none"),
            ("eval_every", "0 evaluates only at the end"),
            ("eval_episodes", "0 for no evaluation"),
            ("time_budget_min", "0 for no limit"),
        ):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)} ({fix})")
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip} (e.g. 1.0)")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema} (e.g. 0.999)")
