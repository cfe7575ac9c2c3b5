"""Inference-time policies: the deployable interface (``base``), test-time compute as
wrappers around a policy (``wrappers``: RECAP's indicator and guidance, best-of-N), built-in
stand-ins (``builtin``) and loading by name or checkpoint (``registry``, where algorithms
register their checkpoint formats).

Kept import-light: nothing here imports JAX or an algorithm until a built-in is constructed
or a checkpoint is loaded."""
