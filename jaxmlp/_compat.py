"""The JAX names jaxmlp uses that are newer than its oldest supported JAX (pyproject.toml's floor).

On a JAX that has the name, each is JAX's own object, so nothing changes there; the fallback is the
same thing under its older spelling. ``.ci/lowest`` runs the tests on the floor. Once the floor
reaches the version in a comment, the name can be used from JAX directly and its shim dropped.

Below jax 0.5.1 more is missing than a shim should cover (``jax.tree_util.keystr(simple=...,
separator=...)``, ``jax.distributed.is_initialized``, a batching rule for
``jax.lax.optimization_barrier``, ``Array.committed``, the "highest" matmul-precision name), hence
the floor.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import jax
import jax.monitoring

# ``with enable_x64(True):`` 64-bit types on (or off, with False) in this thread until the block ends.
# jax >= 0.8.0: jax.enable_x64; before: jax.experimental.enable_x64, the same context (gone in 0.9.0).
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else importlib.import_module("jax.experimental").enable_x64


def shard_map(f: Callable, *, mesh, in_specs, out_specs) -> Callable:
    """``f`` run on every device of ``mesh`` on its part of each argument (``in_specs``), the parts of its
    results joined as ``out_specs`` say; replication is not checked (``f`` keeps shared values shared)."""
    if hasattr(jax, "shard_map"):  # jax >= 0.7.0
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    legacy = importlib.import_module("jax.experimental.shard_map").shard_map  # the same, check_rep before
    return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def unregister_event_duration_listener(callback: Callable[..., None]) -> None:
    """Remove ``callback``, added by ``jax.monitoring.register_event_duration_secs_listener``."""
    if hasattr(jax.monitoring, "unregister_event_duration_listener"):  # jax >= 0.8.1
        jax.monitoring.unregister_event_duration_listener(callback)
    else:  # the same function, private before
        importlib.import_module("jax._src.monitoring")._unregister_event_duration_listener_by_callback(callback)
