"""Helpers shared by the adapters: optional imports, headless MuJoCo, scoped global RNG.

Nothing here imports an optional package at module import time: ``import anyskill`` must work
without the ``sim`` extra installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np

INSTALL_HINT = "pip install 'anyskill[sim]'"


def require(module: str, *, package: str | None = None, purpose: str) -> ModuleType:
    """Import an optional dependency or fail with the command that installs it.

    Args:
      module: the import name, e.g. ``"gym_pusht"``.
      package: the PyPI name, when it differs from ``module`` (e.g. ``"gym-pusht"``).
      purpose: what needs it, e.g. ``"anyskill.envs.adapters.lerobot_sim (PushT)"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs the optional package {package or module!r}, which could not be "
            f"imported ({e}). Install the simulator extras with: {INSTALL_HINT}"
        ) from e
    except Exception as e:  # installed, but its import crashed (MuJoCo's GL setup, typically)
        raise ImportError(f"importing {module!r} for {purpose} failed: {e!r}.{_gl_hint()}") from e


def _gl_hint() -> str:
    gl = os.environ.get("MUJOCO_GL")
    return (
        f" MUJOCO_GL={gl!r} is set: its OpenGL library may be missing (EGL: apt-get install "
        "libegl1 libegl-mesa0 libgl1-mesa-dri; OSMesa: libosmesa6), or unset MUJOCO_GL."
        if gl
        else ""
    )


def gl_error(what: str, error: Exception) -> RuntimeError:
    """A clear error for a failed MuJoCo OpenGL context (no display, no GL library)."""
    return RuntimeError(
        f"{what} needs an off-screen OpenGL context, which could not be created ({error!r}). "
        "Set MUJOCO_GL=egl (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or "
        "MUJOCO_GL=osmesa (apt-get install libosmesa6) before mujoco is imported; currently "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}."
    )


def prefer_headless_mujoco_gl() -> None:
    """Choose an off-screen OpenGL backend for MuJoCo when no display is available.

    MuJoCo picks its GL backend once, when ``mujoco`` is first imported, from ``MUJOCO_GL``;
    the default (GLFW) needs an X/Wayland display and fails on a headless machine with "an
    OpenGL platform library has not been loaded". EGL renders without a display (on a GPU, or
    in software through Mesa's llvmpipe: Debian/Ubuntu packages ``libegl1 libegl-mesa0
    libgl1-mesa-dri``). A value the user set is left alone, and so is a process where MuJoCo
    was already imported (too late to choose).
    """
    if "MUJOCO_GL" in os.environ or "mujoco" in sys.modules or sys.platform != "linux":
        return
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return
    os.environ["MUJOCO_GL"] = "egl"
    # PyOpenGL must agree with MuJoCo's context type; MuJoCo's EGL module sets this too, but
    # only if PyOpenGL was not imported first.
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


class LegacyGlobalRNG:
    """A private stream for code that draws from numpy's *global* legacy RNG (``np.random.*``).

    Some simulators (OGBench's maze start/goal noise, gym-hil's random cube position) draw
    from ``np.random`` instead of the env's seeded ``np_random``, so ``reset(seed=...)`` alone
    does not make them reproducible. Seeding the global RNG would change every other user's
    random numbers; instead :meth:`active` swaps this object's state in for the duration of
    one simulator call and swaps the caller's state back afterwards.
    """

    def __init__(self, seed: int | None = None):
        self._state = np.random.RandomState(seed).get_state()

    def reseed(self, seed: int | None) -> None:
        self._state = np.random.RandomState(seed).get_state()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = np.random.get_state()
        np.random.set_state(self._state)
        try:
            yield
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)
