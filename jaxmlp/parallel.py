"""Data parallelism with ``jax.sharding``: one program, the minibatch split over a mesh of devices.

The recipe is GSPMD's: build a 1-D ``Mesh`` whose single axis is ``"data"``, place params, optimizer
state, PRNG key and the (small) dataset *replicated* on every device, and constrain each minibatch to
be split along ``"data"`` inside the compiled epoch (``TrainSpec.batch_sharding``). XLA partitions
the forward and backward passes by batch rows and inserts the all-reduce of the gradients itself, so
the training code is the single-device code, unchanged::

    mesh = make_mesh(4)
    result = train.fit(config, data, mesh=mesh)        # or: jaxmlp train --devices 4

With the same global batch and the same shuffle, every device count computes the same updates; only
the order of the gradient sums differs, so results agree to float round-off.

Several hosts: call ``jax.distributed.initialize(...)`` first in every process (see the README);
``jax.devices()`` then lists all hosts' devices and ``make_mesh(jax.device_count())`` spans them.
On one CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax starts) gives N
host devices to try it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` of ``devices`` (default: all).

    Raises ValueError naming ``--devices`` when fewer devices exist.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
        raise ValueError(f"--devices must be a positive integer, got {num_devices!r}")
    if num_devices > len(devices):
        platform = devices[0].platform if devices else "?"
        hint = (" (on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting)"
                if platform == "cpu" else "")
        raise ValueError(f"--devices {num_devices}: only {len(devices)} {platform} device(s) available{hint}")
    return Mesh(np.array(devices[:num_devices]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's data axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` placed, whole, on every device of ``mesh``.

    With several processes (``jax.distributed``) each one builds its devices' copies from its own
    value of the leaf, so every process must pass the same values (same data, config and seed).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(one, tree)


def data_parallel_spec(spec, mesh: Mesh):
    """``spec`` (a ``train.TrainSpec``) with its minibatches split over ``mesh``.

    The global batch must divide evenly so every device gets the same number of rows (a short last
    batch of an epoch may be uneven; XLA pads it).
    """
    n = mesh.devices.size
    if spec.batch_size % n:
        raise ValueError(f"--batch-size {spec.batch_size} must be a multiple of --devices {n} "
                         f"(each device takes batch_size / devices rows)")
    return dataclasses.replace(spec, batch_sharding=batch_sharding(mesh))


def distribute(mesh: Mesh, spec, arrays: Any) -> tuple[Any, Any]:
    """``(data_parallel_spec(spec, mesh), replicate(arrays, mesh))``: what ``train.fit`` needs to run
    data-parallel. ``arrays`` is any PyTree (params, optimizer state, key, x, y)."""
    return data_parallel_spec(spec, mesh), replicate(arrays, mesh)


def device_count(mesh: Mesh | None) -> int:
    """Devices a run uses: the mesh's size, 1 without a mesh."""
    return 1 if mesh is None else int(mesh.devices.size)
