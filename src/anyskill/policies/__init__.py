"""Inference-time policies: the deployable interface (``base``), built-in stand-ins
(``builtin``) and loading by name or checkpoint (``registry``).

Kept import-light: nothing here imports JAX until a built-in is constructed."""
