"""Data parallelism with ``jax.sharding``: one program, the minibatch (or a sweep's models) split over a mesh.

The recipe is GSPMD's: build a 1-D ``Mesh`` whose single axis is ``"data"``, place params, optimizer
state, PRNG key and the (small) dataset *replicated* on every device, and constrain each minibatch to
be split along ``"data"`` inside the compiled epoch (``TrainSpec.batch_sharding``). XLA partitions
the forward and backward passes by batch rows and inserts the all-reduce of the gradients itself, so
the training code is the single-device code, unchanged::

    mesh = make_mesh(4)
    result = jaxmlp.fit(config, data, mesh=mesh)       # or: jaxmlp train --devices 4

With the same global batch and the same shuffle, every device count computes the same updates; only
the order of the gradient sums differs, so results agree to float round-off.

Several processes (hosts), on JAX's own distributed runtime: every process runs the same program
(SPMD), each driving its local devices. Call ``initialize(...)`` first in every process, before
anything touches devices; ``jax.devices()`` then lists all processes' devices and ``mesh_for(None)``
spans them. Every process loads the full (small) dataset and uses the same config and seed, so
``distribute`` builds the same *global* replicated arrays everywhere (and checks that they are the
same). The batch-sharding constraint gives each process its devices' rows of every global minibatch,
and the gradient all-reduce crosses processes (gloo over TCP on CPUs, NCCL on GPUs): the global batch
and the shuffle are those of one process with as many devices. Outputs (params, losses) come back
replicated, so every process can read them; ``to_host`` makes NumPy copies. Only the primary process
(``is_primary()``) should write files.

Sweeps and ensembles split the other way: a mesh whose axis is ``"members"`` (``make_mesh(n,
axis=MEMBER_AXIS)``) gives each device a slice of the models, the data replicated
(``members.train_group``); nothing crosses devices, so every device count gives the same bits.

On one CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax starts) gives N
host devices to try it; two processes on 127.0.0.1 try the multi-process path (tests/test_parallel.py).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import time
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MEMBER_AXIS = "members"  # a sweep's or ensemble's models, split over the devices (jaxmlp.members)
INIT_TIMEOUT_S = 120  # JAX's default is 300 s; a mistyped address should fail sooner


# ---------------------------------------------------------------- several processes


def _parse_coordinator(coordinator: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) -> (host, port); ValueError naming ``coordinator``."""
    host, sep, port = str(coordinator).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"initialize: coordinator must be HOST:PORT (a port in 1..65535), got {coordinator!r}")
    return host, int(port)


def _check_process_flags(num_processes: Any, process_id: Any) -> None:
    def whole(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not whole(num_processes) or num_processes < 1:
        raise ValueError(f"initialize: num_processes must be a positive integer, got {num_processes!r}")
    if not whole(process_id) or not 0 <= process_id < num_processes:
        raise ValueError(f"initialize: process_id must be an integer in 0..{num_processes - 1} "
                         f"(num_processes={num_processes}), got {process_id!r}")


def _check_port_free(coordinator: str, port: int) -> None:
    """Process 0 hosts the coordinator service on every interface at ``port``: fail in one line when
    that port is taken (JAX itself would crash the process)."""
    if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return  # bound elsewhere; JAX reports its own errors
    try:
        dual = socket.has_dualstack_ipv6()
        socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                             dualstack_ipv6=dual).close()
    except OSError as e:
        raise ValueError(f"initialize: coordinator={coordinator!r}: process 0 cannot listen on port {port} "
                         f"({os.strerror(e.errno) if e.errno else e}); pick a free port") from None


def _wait_for_coordinator(coordinator: str, host: str, port: int, timeout_s: float) -> None:
    """Poll ``host:port`` until process 0's coordinator accepts TCP connections, at most ``timeout_s``
    seconds. (JAX aborts the whole process when its own connection attempt times out.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1))).close()
            return
        except socket.gaierror as e:
            raise ValueError(f"initialize: coordinator={coordinator!r}: cannot resolve host {host!r} "
                             f"({e.strerror})") from None
        except OSError:
            if time.monotonic() >= deadline:
                raise ValueError(f"initialize: coordinator={coordinator!r}: no coordinator answered within "
                                 f"{timeout_s:g} s (is process 0 running, with the same HOST:PORT?)") from None
            time.sleep(0.2)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: float = INIT_TIMEOUT_S) -> None:
    """Join a multi-process run on JAX's distributed runtime. Call once per process, at program entry,
    before anything touches devices (``jax.devices()``, any array).

    ``coordinator`` is process 0's ``"HOST:PORT"`` (process 0 serves it; the others connect), and
    ``num_processes`` / ``process_id`` say how many processes and which one this is. With all three
    None, JAX detects them from a cluster launcher (SLURM, Open MPI, TPU pods). On CPUs the processes'
    collectives go over gloo (TCP): this sets the process-wide ``jax_cpu_collectives_implementation``
    to ``"gloo"`` unless the JAX_CPU_COLLECTIVES_IMPLEMENTATION environment variable chose one (e.g.
    ``mpi``); it changes nothing on GPUs, which use NCCL. Errors are one-line ValueErrors naming the
    argument: a malformed HOST:PORT, a process id out of range, a coordinator port already taken (process
    0), a coordinator that does not answer within ``timeout_s`` seconds (other processes), no cluster
    detected. Process 0 waiting for peers that never come is JAX's own fatal error after ``timeout_s``.
    """
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("initialize: coordinator, num_processes and process_id go together (or give none of them "
                         "to let JAX detect a SLURM / Open MPI cluster)")
    if all(given):
        assert coordinator is not None and num_processes is not None and process_id is not None  # all(given)
        host, port = _parse_coordinator(coordinator)
        _check_process_flags(num_processes, process_id)
        if jax.distributed.is_initialized():
            raise ValueError(f"initialize: coordinator={coordinator!r}: this process already joined a distributed run")
        if process_id == 0:
            _check_port_free(coordinator, port)
        else:
            _wait_for_coordinator(coordinator, host, port, timeout_s)
        args: dict[str, Any] = {"coordinator_address": coordinator, "num_processes": int(num_processes),
                                "process_id": int(process_id)}
    else:
        args = {}
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**args, initialization_timeout=max(1, int(timeout_s)))
    except RuntimeError as e:  # called twice, or after the backend started
        raise ValueError(f"initialize: {str(e).splitlines()[0]}") from None
    except ValueError:  # auto-detection found no cluster
        raise ValueError("initialize: no cluster launcher detected (SLURM, Open MPI, ...); give coordinator "
                         "(HOST:PORT), num_processes and process_id") from None
    if jax.process_count() > 1:
        _connect_quietly()


def _connect_quietly() -> None:
    """Connect the processes' collectives now, with anything written to the standard output meanwhile
    sent to the standard error: gloo announces its connection there ("[Gloo] Rank 0 is connected to
    ..."), which would otherwise land in the middle of a command's results."""
    import sys

    from jax.experimental import multihost_utils

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        multihost_utils.sync_global_devices("jaxmlp: processes joined")
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def is_primary() -> bool:
    """True in process 0 (always, without ``initialize``): the one process that writes files."""
    return jax.process_index() == 0


def agreed(value: int) -> int:
    """The first non-zero ``value`` of the processes, in process order (0 when every one passed 0): the
    same answer in every process. With several processes it is a collective (every one calls it at
    the same point of its run); with one it is ``value``. How a signal that reached one process stops
    them all at one step.

    Args:
        value: this process's integer (a signal's number, or 0).
    """
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)
    nonzero = every[every != 0]
    return int(nonzero[0]) if nonzero.size else 0


def process_info() -> dict:
    """``{"process_index", "process_count", "device_count" (all processes), "local_device_count"}``."""
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}


def to_host(tree: Any) -> Any:
    """NumPy copies of every array leaf of ``tree``, also of global arrays spanning several processes.

    Replicated leaves (params, optimizer state and losses after ``fit``) are read from this process's
    own copy. A leaf sharded across processes is gathered with ``process_allgather``, a collective:
    call ``to_host`` in every process, never only in the primary one.
    """
    from jax.experimental import multihost_utils

    def one(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree_util.tree_map(one, tree)


# ---------------------------------------------------------------- the mesh and placement


def make_mesh(num_devices: int = 1, devices: Sequence[Any] | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh with axis ``axis`` over the first ``num_devices`` of ``devices`` (default: all,
    every process's after ``initialize``). ``axis``: ``"data"`` (``DATA_AXIS``) splits a run's
    minibatches, ``"members"`` (``MEMBER_AXIS``) a sweep's or an ensemble's models.

    Raises ValueError naming ``num_devices`` when fewer devices exist, or when a multi-process mesh
    leaves some process without a device (every process must take part in every step).
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
        raise ValueError(f"make_mesh: num_devices must be a positive integer, got {num_devices!r}")
    if num_devices > len(devices):
        platform = devices[0].platform if devices else "?"
        hint = (" (on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting)"
                if platform == "cpu" else "")
        raise ValueError(f"make_mesh: num_devices={num_devices}: only {len(devices)} {platform} device(s) "
                         f"available{hint}")
    if len({d.process_index for d in devices[:num_devices]}) < jax.process_count():
        raise ValueError(f"make_mesh: num_devices={num_devices}: a run of {jax.process_count()} processes needs "
                         f"devices in every process (use all {jax.device_count()})")
    return Mesh(np.array(devices[:num_devices]), (axis,))


def mesh_for(num_devices: int | None = None, axis: str = DATA_AXIS) -> Mesh | None:
    """The mesh a run trains on, from ``--devices``: None (train on one device, no mesh) for one
    process asking for at most one device; otherwise ``make_mesh`` over ``num_devices`` devices, and
    over every device of every process when ``num_devices`` is None in a multi-process run. ``axis``:
    the mesh's axis name (``make_mesh``)."""
    if num_devices is None:
        num_devices = jax.device_count() if jax.process_count() > 1 else 1
    if num_devices == 1 and jax.process_count() == 1:
        return None
    return make_mesh(num_devices, axis=axis)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's data axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def _check_same_everywhere(leaves: list) -> None:
    """Every process must pass bit-identical values: compare a CRC-32 of each leaf across processes
    (one tiny all-gather) so a different data folder, seed or flag fails loudly instead of silently
    training on mismatched copies."""
    from jax.experimental import multihost_utils

    crcs = np.array([zlib.crc32(np.ascontiguousarray(leaf).reshape(-1).view(np.uint8).data) for leaf in leaves],
                    np.uint32)
    every = multihost_utils.process_allgather(crcs)  # (processes, leaves)
    if (every != every[0]).any():
        bad = int(np.argmax((every != every[0]).any(axis=0)))
        raise ValueError(f"the processes hold different values for input {bad} of {len(leaves)} "
                         f"(run every process with the same data, TrainConfig.seed and other settings)")


def place(tree: Any, mesh: Mesh, specs: Any = None) -> Any:
    """Every array leaf of ``tree`` placed on ``mesh`` as ``specs`` says: one ``PartitionSpec`` for
    every leaf, or a tree of them that is a prefix of ``tree`` (``PartitionSpec()``, the default: whole
    on every device; ``PartitionSpec("members")``: the leading axis split over the mesh's ``"members"``
    axis).

    Every process passes the whole value of every leaf. With several processes each one builds its
    own devices' parts of one *global* array from it (``jax.make_array_from_process_local_data``), so
    every process must pass the same values (same data, config and seed); this is checked (ValueError
    when they differ). A ``jax.ShapeDtypeStruct`` leaf comes back as one with the sharding: what a
    program for the placed arrays compiles from.
    """
    is_spec, is_sharding = (lambda s: isinstance(s, PartitionSpec)), (lambda s: isinstance(s, NamedSharding))
    specs = PartitionSpec() if specs is None else specs
    shardings = jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=is_spec)
    per_leaf = jax.tree_util.tree_map(lambda s, sub: jax.tree_util.tree_map(lambda _: s, sub), shardings, tree,
                                      is_leaf=is_sharding)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    where = jax.tree_util.tree_leaves(per_leaf, is_leaf=is_sharding)
    if all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves):
        placed = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s) for a, s in zip(leaves, where)]
        return jax.tree_util.tree_unflatten(treedef, placed)
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    host = [np.asarray(leaf) for leaf in leaves]
    _check_same_everywhere(host)
    placed = [jax.make_array_from_process_local_data(s, h, h.shape) for s, h in zip(where, host)]
    return jax.tree_util.tree_unflatten(treedef, placed)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` placed, whole, on every device of ``mesh`` (``place`` with
    ``PartitionSpec()``): every process must pass the same values (checked, ValueError otherwise)."""
    return place(tree, mesh)


def data_parallel_spec(spec, mesh: Mesh):
    """``spec`` (a ``runs.TrainSpec`` or an ``engine.FunctionTask``) with its minibatches split over ``mesh``.

    The global batch must divide evenly so every device gets the same number of rows (a short last
    batch of an epoch may be uneven; XLA pads it).
    """
    n = mesh.devices.size
    if spec.batch_size % n:
        raise ValueError(f"data_parallel_spec: spec.batch_size={spec.batch_size} must be a multiple of "
                         f"mesh.devices.size={n} (each device takes batch_size / devices rows)")
    return dataclasses.replace(spec, batch_sharding=batch_sharding(mesh))


def distribute(mesh: Mesh, spec, arrays: Any) -> tuple[Any, Any]:
    """``(data_parallel_spec(spec, mesh), replicate(arrays, mesh))``: what ``engine.build_run`` needs to run
    data-parallel. ``arrays`` is any PyTree, in ``fit`` (params, opt_state, key (2,) uint32,
    x (N, D), y (N,) int32).

    The data is placed *replicated*, whole on every device (and, with several processes, held whole by
    every process): the on-device shuffle gathers each minibatch from all N rows, and the spec's
    batch-sharding constraint then gives every device its ``batch_size / devices`` rows of it.
    Memory per device is the dataset's (MNIST: 188 MB as float32), fine for this library's sizes.
    """
    return data_parallel_spec(spec, mesh), replicate(arrays, mesh)


def device_count(mesh: Mesh | None) -> int:
    """Devices a run uses: the mesh's size, 1 without a mesh."""
    return 1 if mesh is None else int(mesh.devices.size)
