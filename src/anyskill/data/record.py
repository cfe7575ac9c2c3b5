"""Record demonstrations of the tabletop scripted expert into an episode store, and redraw
recorded episodes from their states (``anyskill data record`` / ``anyskill data render``).

Episode ``i`` of a recording with seed ``s`` starts from ``env.reset(fold_in(key(s), i))``;
the episodes table keeps ``env_seed`` and ``env_episode`` so the episode can be replayed
exactly (the physics is deterministic) and drawn by the env's own camera.

Features: ``observation.state`` [obs_dim], ``observation.goal`` [goal_dim] (the goal state the
instruction asks for), ``action`` [2], and with ``images=True`` the camera
``observation.images.top`` [S, S, 3] as MP4. Frame t holds the state before action t; the
episode ends at the step that fulfils the instruction (success) or at the time limit.

With ``dart=True`` (DART: Laskey et al., "DART: Noise Injection for Robust Imitation
Learning", CoRL 2017) the executed action is the noisy one but the recorded label
``action`` is the expert's noise-free action at the same state: the noise widens the states
the demonstrations visit (the expert shows how it recovers from a perturbation), while the
labels stay the expert's intent. The executed action is kept as ``action.executed`` so the
episode still replays exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from anyskill.data.format import read_info, vector_feature, video_feature
from anyskill.data.state_layout import StateLayout, declare
from anyskill.data.writer import EpisodeWriter, load_source_env

CAMERA = "observation.images.top"
EXECUTED = "action.executed"


@dataclasses.dataclass(frozen=True)
class Recording:
    """What ``record_expert`` wrote."""

    path: str
    episodes: int
    frames: int
    success_rate: float


def expert_envs() -> list[str]:
    """Registered envs that have a scripted expert (the tabletop tasks)."""
    from anyskill import envs
    from anyskill.envs.tabletop import Tabletop

    def is_tabletop(factory) -> bool:
        cls = getattr(factory, "func", factory)  # registry entries are functools.partials
        return isinstance(cls, type) and issubclass(cls, Tabletop)

    return sorted(name for name, factory in envs.REGISTRY.items() if is_tabletop(factory))


def _make_env(env_name: str, **overrides):
    from anyskill import envs
    from anyskill.envs.tabletop import Tabletop

    def no_expert() -> ValueError:
        return ValueError(
            f"--env {env_name!r} has no scripted expert to record; envs with one: "
            f"{', '.join(expert_envs())}"
        )

    # before constructing it: other envs do not take the tabletop's overrides (image_size)
    if env_name in envs.REGISTRY and env_name not in expert_envs():
        raise no_expert()
    env = envs.make(env_name, **overrides)
    if not isinstance(env, Tabletop):
        raise no_expert()
    return env


@dataclasses.dataclass(frozen=True)
class RecordingSpec:
    """The dataset a recording writes: its features, fps and ``meta/anyskill/source.json``."""

    features: dict
    fps: int
    source: dict


def recording_spec(
    env_name: str,
    images: bool,
    image_size: int,
    dart: bool,
    noise: float,
    seed: int,
    instructions: str = "templates",
) -> RecordingSpec:
    env = _make_env(env_name, image_size=image_size, instructions=instructions)
    features = {
        # declares the state's entities (pusher, objects, zones) for policies that read one
        # token per entity (see anyskill.data.state_layout)
        "observation.state": declare(
            vector_feature(env.obs_dim), StateLayout(env.state_tokens(), env.state_token_words())
        ),
        "observation.goal": vector_feature(env.goal_dim),
        "action": vector_feature(env.action_dim),
    }
    if dart:
        features[EXECUTED] = vector_feature(env.action_dim)
    if images:
        features[CAMERA] = video_feature(image_size, image_size, int(env.control_hz))
    source = {"env": env_name, "image_size": image_size, "noise": noise, "seed": seed}
    if dart:
        source["dart"] = True
    if instructions != "templates":  # template recordings keep the source.json they had
        source["instructions"] = instructions
    return RecordingSpec(features, int(env.control_hz), source)


def _check_arguments(episodes: int, noise: float, image_size: int, images: bool, batch: int):
    checks = [
        ("--episodes", episodes, episodes >= 1, "at least 1"),
        ("--noise", noise, noise >= 0, ">= 0 (the std of the expert's action noise)"),
        ("--image-size", image_size, image_size > 0, "a positive number of pixels"),
        ("batch", batch, batch >= 1, "at least 1"),
    ]
    if images and image_size > 0:
        checks.append(("--image-size", image_size, image_size % 2 == 0, "even (H.264 video)"))
    for flag, value, ok, want in checks:
        if not ok:
            raise ValueError(f"{flag} must be {want}, got {value}")


def _check_continuation(
    out: Path,
    spec: RecordingSpec,
    env_name: str,
    images: bool,
    image_size: int,
    dart: bool,
    instructions: str = "templates",
) -> None:
    """Refuse to continue a recording with settings other than those it was started with:
    the episodes would silently mix envs, cameras or labels."""
    info = read_info(out)
    source = load_source_env(out) or {}
    have_images = CAMERA in info.features
    checks = [
        ("--env", source.get("env", info.robot_type), env_name),
        ("--images", have_images, images),
        ("--dart", EXECUTED in info.features, dart),
        ("--instructions", source.get("instructions", "templates"), instructions),
    ]
    if have_images and images:
        checks.append(("--image-size", info.features[CAMERA].shape[0], image_size))
    for flag, have, given in checks:
        if have != given:
            raise ValueError(
                f"{out}: {flag} does not match the recording being continued: the dataset has "
                f"{flag}={have}, given {flag}={given}; continue it with {flag}={have} or record "
                "into a new --out"
            )
    want = {k: (f.dtype, f.shape) for k, f in spec.features.items()}
    have = {
        k: (f.dtype, f.shape) for k in info.user_keys + info.video_keys for f in [info.features[k]]
    }
    if want != have:
        raise ValueError(
            f"{out}: its features {have} differ from those --env {env_name} records {want}; "
            "record into a new --out"
        )


def _episode_keys(seed: int, first: int, n: int) -> jax.Array:
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(first, first + n))


def record_expert(
    out: Path | str,
    env_name: str = "tabletop-push",
    episodes: int = 10,
    images: bool = False,
    image_size: int = 64,
    noise: float = 0.1,
    seed: int = 0,
    batch: int = 32,
    progress: Callable[[int], None] | None = None,
    dart: bool = False,
    instructions: str = "templates",
    subtasks: bool = True,
) -> Recording:
    """Record ``episodes`` expert episodes into a new dataset at ``out`` (or continue one
    that this function started earlier with the same env: episodes are appended).

    ``dart``: execute the noisy action but record the noise-free one as the label (see the
    module docstring). ``instructions``: the env's instruction source (``templates`` or
    ``grammar``, kept in ``source.json``). ``subtasks``: label every episode's subtasks
    afterwards (:func:`anyskill.data.subtasks.annotate_subtasks`, a sidecar file). ``progress(n)`` is called with 0 once the dataset is open, then with 1
    per recorded episode. Continuing a recording with another env, camera, image size or
    ``dart`` setting is refused before anything is written."""
    from anyskill.envs.tabletop import ScriptedExpert
    from anyskill.rollout import EpisodeKeys, JaxBatchEnv, expert_policy, rollout

    _check_arguments(episodes, noise, image_size, images, batch)
    out = Path(out)
    spec = recording_spec(env_name, images, image_size, dart, noise, seed, instructions)
    env = _make_env(env_name, image_size=image_size, instructions=instructions)
    expert = expert_policy(env, noise=noise)
    benv = JaxBatchEnv(env)
    # DART's label: the noise-free expert at the state the noisy execution reached
    label = jax.jit(jax.vmap(jax.vmap(ScriptedExpert(env, noise=0.0).act, (0, None)), (0, None)))

    def record(keys: jax.Array):
        """Episode ``i`` resets with ``split(keys[i])[0]``; its expert acts with the keys of
        ``split(keys[i])[1]`` (a batch of envs gives each episode what it gives alone)."""
        pairs = jax.vmap(jax.random.split)(keys)
        return rollout(
            benv,
            expert,
            EpisodeKeys(reset=pairs[:, 0], run=pairs[:, 1]),
            num_envs=len(keys),
            replan_every=1,
            record_images=image_size if images else 0,
            record_env_state=dart,
        )

    if (out / "meta" / "info.json").exists():
        _check_continuation(out, spec, env_name, images, image_size, dart, instructions)
        writer = EpisodeWriter.open(out)
    else:
        writer = EpisodeWriter.create(
            out, spec.features, fps=spec.fps, robot_type=env_name, source_env=spec.source
        )
    with writer:  # releases the writer lock however the recording ends
        if progress is not None:
            progress(0)
        first = writer.total_episodes
        batch = max(1, min(batch, episodes))
        done = 0
        wins = 0
        while done < episodes:
            n = min(batch, episodes - done)
            # always a full batch (one compilation); episodes past n are dropped
            keys = _episode_keys(seed, first + done, batch)
            ep = record(keys)
            labels = ep.action
            if dart:
                labels = np.asarray(label(ep.env_state.physics, jax.random.key(0)))
            for i in range(n):
                t = int(ep.length[i])
                frames = {
                    "observation.state": ep.state[i, :t],
                    "observation.goal": ep.goal[i, :t],
                    "action": labels[i, :t],
                }
                if dart:
                    frames[EXECUTED] = ep.action[i, :t]
                if images:
                    frames[CAMERA] = ep.images[i, :t]
                writer.add_episode(
                    frames,
                    task=ep.task[i],
                    success=bool(ep.success[i]),
                    source="demonstration",
                    policy_version=f"scripted-expert(noise={noise}{', dart' if dart else ''})",
                    episode_info={"env_seed": int(seed), "env_episode": int(first + done + i)},
                )
                wins += int(ep.success[i])
                if progress is not None:
                    progress(1)
            done += n
        recording = Recording(
            path=str(out),
            episodes=writer.total_episodes,
            frames=writer.total_frames,
            success_rate=wins / max(episodes, 1),
        )
    if subtasks:  # after the writer closed: the labels read the committed episodes
        from anyskill.data.subtasks import annotate_subtasks

        annotate_subtasks(out)
    return recording


def record_adapter_expert(
    out: Path | str,
    env_name: str = "gym-pusht",
    episodes: int = 10,
    noise: float = 0.1,
    seed: int = 0,
    max_steps: int | None = None,
    progress: Callable[[int], None] | None = None,
    reset_seed: int | None = None,
) -> Recording:
    """Record ``episodes`` episodes of an adapter env's scripted expert (gym-pusht,
    gym-hil-panda: :data:`anyskill.envs.adapters.ADAPTER_ENVS` entries with an ``expert``)
    through the one rollout, each stored as it ends, under LeRobot feature names
    (``observation.state``, ``observation.goal`` when the env has one, ``action``).

    Episode ``i`` (counted over the whole recording) starts from
    ``env.reset(seed=reset_seed + i)`` (``reset_seed`` defaults to ``seed``); the expert's
    noise comes from ``key(seed)``. A recording that was stopped continues after the episodes
    already stored (with the same env). ``max_steps``: the episode's time limit (default: the
    env's own). ``progress(n)`` as for :func:`record_expert`."""
    from anyskill.envs.adapters import ADAPTER_ENVS, make_env
    from anyskill.names import unknown_name
    from anyskill.rollout import HostBatchEnv, rollout

    entry = ADAPTER_ENVS.get(env_name)
    with_expert = sorted(n for n, e in ADAPTER_ENVS.items() if e.expert is not None)
    if entry is None:
        raise unknown_name("adapter env with a scripted expert (--env)", env_name, with_expert)
    if entry.expert is None:
        raise ValueError(
            f"--env {env_name} has no scripted expert to record; adapter envs with one: "
            f"{', '.join(with_expert)}"
        )
    _check_arguments(episodes, noise, 1, False, 1)
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None (the env's own), got {max_steps}")
    out = Path(out)
    expert = entry.expert(noise)
    env = make_env(env_name)
    start = seed if reset_seed is None else reset_seed
    benv = HostBatchEnv(env, seed=start, max_steps=int(max_steps or entry.max_steps))
    benv.name = env_name
    fields = benv.offered()
    features = {"observation.state": vector_feature(fields["observation.state"].shape[0])}
    if "observation.goal" in fields:
        features["observation.goal"] = vector_feature(fields["observation.goal"].shape[0])
    features["action"] = vector_feature(expert.spec.action_dim)
    if (out / "meta" / "info.json").exists():
        source = load_source_env(out) or {}
        info = read_info(out)
        if source.get("env", info.robot_type) != env_name:
            raise ValueError(
                f"{out}: --env does not match the recording being continued: the dataset has "
                f"--env={source.get('env', info.robot_type)}, given --env={env_name}; "
                "continue it with its env or record into a new --out"
            )
        writer = EpisodeWriter.open(out)
    else:
        source = {"env": env_name, "noise": noise, "seed": seed}
        writer = EpisodeWriter.create(
            out, features, fps=round(entry.control_hz), robot_type=env_name, source_env=source
        )
    wins = [0]

    def store(ep) -> None:
        writer.add_episode(
            ep.frames(0),
            task=ep.task[0],
            success=bool(ep.success[0]),
            source="demonstration",
            policy_version=expert.spec.name,
        )
        wins[0] += int(ep.success[0])
        if progress is not None:
            progress(1)

    with writer:  # releases the writer lock however the recording ends
        if progress is not None:
            progress(0)
        have = writer.total_episodes
        rollout(
            benv,
            expert,
            jax.random.key(seed),
            num_envs=have + episodes,
            replan_every=1,
            skip=have,
            on_episode=store,
        )
        return Recording(
            path=str(out),
            episodes=writer.total_episodes,
            frames=writer.total_frames,
            success_rate=wins[0] / max(episodes, 1),
        )


def replay_images(
    env_name: str,
    seed: int,
    episode: int,
    actions: np.ndarray,
    image_size: int = 64,
    instructions: str = "templates",
) -> np.ndarray:
    """Camera frames ``[T, S, S, 3]`` of a recorded episode, re-simulated from its reset key
    and recorded actions (frame t is the state before action t); ``instructions`` as it was
    recorded (the task rows an env draws from depend on it)."""
    env = _make_env(env_name, image_size=image_size, instructions=instructions)
    key = _episode_keys(seed, episode, 1)[0]
    s0 = env.reset(jax.random.split(key)[0])

    @jax.jit
    def run(s0, acts):
        def step(s, a):
            return env.step(s, a), env.render_image(s.physics, image_size)

        _, imgs = jax.lax.scan(step, s0, acts)
        return imgs

    return np.asarray(run(s0, jnp.asarray(actions, jnp.float32)))
