"""anyskill: general-purpose robot policies, from demonstrations and from experience."""

import os as _os
from pathlib import Path as _Path

# JAX's persistent compilation cache: a second run of the same command (a resumed run, the
# demo, the tests) skips the XLA compilations that dominate short CPU jobs. Set
# JAX_COMPILATION_CACHE_DIR yourself to move it, or to "" to turn it off. (An environment
# variable, so importing anyskill does not import JAX: the robot runtime stays JAX-free.)
_os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(_Path.home() / ".cache" / "anyskill" / "jax")
)
