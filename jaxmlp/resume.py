"""What ``jaxmlp.train`` needs to continue a run as the command line does: where a resumed run starts
(a checkpoint path, an ``Interrupted``, a ``TrainState``), the check that the call trains what was
saved (batch size, data, key), and the checkpoint a ``train`` run writes.

A ``train`` checkpoint's meta: ``history``, ``partial`` (the stopped epoch's loss sum and seconds),
``batch_size``, ``data`` (``fingerprint`` of x and y), ``params_tree`` (``checkpoint.describe_tree``,
for ``checkpoint.load_params``) and, for a typed key, ``key_impl`` (the state stores its data).
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import CheckpointError, load_state, read_meta, save_checkpoint
from .chunks import TrainState, steps_per_epoch
from .events import Interrupted
from .parallel import to_host

__all__ = ["key_parts", "raw_key", "fingerprint", "resume_from", "check_unchanged", "save_plain"]


def key_parts(key) -> tuple[str, list]:
    """(implementation, data) of a raw or typed PRNG key: what tells two keys apart."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key)).tolist()
    return str(jax.config.jax_default_prng_impl), np.asarray(key).tolist()  # type: ignore[attr-defined]


def raw_key(key):
    """The data of a typed key (what a checkpoint stores); a raw key itself."""
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


@functools.partial(jax.jit, static_argnames=("stride",))
def _strided(a: jax.Array, stride: int) -> jax.Array:
    return a.reshape(-1)[::stride]


def fingerprint(x: jax.Array, y: jax.Array) -> dict:
    """Shapes, dtypes and a hash of a fixed strided sample (at most 2**16 values) of x and y: enough to
    tell a checkpoint's data from another set, without reading all of it."""
    def one(a):
        sample = np.asarray(jax.device_get(_strided(a, max(1, a.size >> 16))))
        return f"{a.dtype}{list(a.shape)} sample {hashlib.blake2b(sample.tobytes(), digest_size=8).hexdigest()}"
    return {"x": one(x), "y": one(y)}


def resume_from(resume: Any, fresh: TrainState) -> tuple[TrainState, dict]:
    """(state, meta) to continue from: a checkpoint path's (its typed key wrapped back), an
    ``Interrupted``'s (its meta, else its checkpoint's), a bare ``TrainState`` (no meta), or ``fresh``."""
    if resume is None or isinstance(resume, TrainState):
        return (fresh if resume is None else resume), {}
    if isinstance(resume, Interrupted):
        return resume.state, (resume.meta or ({} if resume.saved is None else read_meta(resume.saved)))
    if not isinstance(resume, (str, os.PathLike)):
        raise ValueError(f"resume: expected a checkpoint path, a TrainState or an Interrupted, got "
                         f"{type(resume).__name__}")
    meta = read_meta(resume)
    bs = meta.get("batch_size")
    if (not isinstance(meta.get("history", []), list) or not isinstance(meta.get("partial", {}), dict)
            or not (bs is None or (isinstance(bs, int) and bs > 0))):
        raise CheckpointError(f"{resume}: meta 'history' must be a list, 'partial' an object and 'batch_size' a "
                              f"positive integer")
    impl, key = meta.get("key_impl"), jax.eval_shape(raw_key, fresh.key)
    if impl is not None:
        try:
            key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl)))
        except (TypeError, ValueError):
            raise CheckpointError(f"{resume}: meta 'key_impl' {impl!r} is not a PRNG implementation") from None
    state = load_state(resume, jax.eval_shape(lambda s: s, fresh)._replace(key=key))
    return (state._replace(key=jax.random.wrap_key_data(state.key, impl=impl)) if impl else state), meta


def check_unchanged(state: TrainState, meta: dict, *, batch_size: int, data: dict, key, num_examples: int,
                    allow_changes: bool) -> TrainState:
    """The state to resume after checking that the call trains what was saved: the batch size, the data
    (``fingerprint``) and the key. A change is refused (one ValueError naming the saved and the given
    values) unless ``allow_changes``: then the given key replaces the saved one and a partial epoch's
    step counts the examples done in batches of the new size."""
    config = meta.get("config")  # a command-line checkpoint's batch size is in its config
    saved_bs = meta.get("batch_size", config.get("batch_size") if isinstance(config, dict) else None)
    changes = [f"batch_size: saved {saved_bs}, given {batch_size}"] if saved_bs not in (None, batch_size) else []
    changes += [f"data {part}: saved {meta['data'][part]}, given {data[part]}" for part in ("x", "y")
                if isinstance(meta.get("data"), dict) and meta["data"].get(part) != data[part]]
    if key is not None and key_parts(key) != key_parts(state.key):
        changes.append(f"key: saved {key_parts(state.key)[1]}, given {key_parts(key)[1]}")
    if changes and not allow_changes:
        raise ValueError(f"resume: this call changes the saved run ({'; '.join(changes)}); pass the saved "
                         f"values, or allow_changes=True to continue with the given ones")
    if key is not None:
        state = state._replace(key=key)
    step = int(state.step)
    if step and saved_bs not in (None, batch_size):
        step = min(step * int(saved_bs), num_examples) // batch_size
        state = state._replace(step=jnp.asarray(step, jnp.int32))
    if step >= steps_per_epoch(num_examples, batch_size):
        raise ValueError(f"resume: the state is at step {step} of its epoch, but {num_examples} examples in "
                         f"batches of {batch_size} make {steps_per_epoch(num_examples, batch_size)} steps")
    return state


def save_plain(path, state: TrainState, history: list, partial: dict, *, kept: dict) -> None:
    """A checkpoint of a ``train`` run: the state (a typed key as its data) and enough meta to continue it
    (``kept``: the batch size, the data's fingerprint, the params' structure)."""
    meta = {"history": history, "partial": partial, **kept}
    if jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key):
        meta["key_impl"] = str(jax.random.key_impl(state.key))
    save_checkpoint(path, to_host(state._replace(key=raw_key(state.key))), meta)
