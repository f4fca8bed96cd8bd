"""Worker for tests/test_parallel.py's multi-process check: train a small MLP, write what it got.

    python tests/_mp_worker.py DATA.npz OUT_PREFIX [COORDINATOR NUM_PROCESSES PROCESS_ID]

DATA.npz holds a ``Dataset``'s four uint8 arrays. With the three distributed arguments the worker
first joins a multi-process run (``parallel.initialize``); without them it is one process over its
local devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` forces N on a CPU). Either way it
trains data-parallel over every device of the run and writes OUT_PREFIX.json (accuracy, losses,
process/device counts, a params checksum) and OUT_PREFIX.npz (the final params, for exact diffs).
A ValueError from ``initialize`` is written as {"error": message} with exit status 2.
"""
from __future__ import annotations

import hashlib
import json
import sys

import jax
import numpy as np

from jaxmlp import parallel
from jaxmlp.config import TrainConfig
from jaxmlp.data import Dataset
from jaxmlp.runs import fit

CONFIG = TrainConfig(epochs=2, hidden=(32,), batch_size=64, lr=0.02, init="he", seed=7)


def main(argv: list[str]) -> int:
    data_path, prefix, *flags = argv
    if flags:
        try:
            parallel.initialize(flags[0], int(flags[1]), int(flags[2]), timeout_s=60)
        except ValueError as e:
            with open(f"{prefix}.json", "w") as f:
                json.dump({"error": str(e)}, f)
            return 2
    with np.load(data_path) as f:
        data = Dataset(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    mesh = parallel.mesh_for(None if flags else jax.device_count())  # multi-process: every device
    result = fit(CONFIG, data, mesh=mesh)
    global_leaves = jax.tree_util.tree_leaves(result.params)
    params = parallel.to_host(result.params)  # every process calls it (it may be a collective)
    leaves = jax.tree_util.tree_leaves(params)
    out = {
        **parallel.process_info(),
        "primary": parallel.is_primary(),
        "mesh_size": parallel.device_count(mesh),
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "losses": [record["loss"] for record in result.history],
        "params_replicated": all(leaf.is_fully_replicated for leaf in global_leaves),
        "params_sha256": hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest(),
        "params_abs_sum": float(sum(np.abs(leaf).astype(np.float64).sum() for leaf in leaves)),
    }
    if jax.process_count() > 1:  # processes passing different values must fail loudly
        try:
            parallel.replicate(np.array([jax.process_index()]), mesh)
            out["mismatch_error"] = None
        except ValueError as e:
            out["mismatch_error"] = str(e)
        try:  # a mesh must give every process a device
            parallel.make_mesh(1)
            out["one_device_mesh_error"] = None
        except ValueError as e:
            out["one_device_mesh_error"] = str(e)
    np.savez(f"{prefix}.npz", *leaves)
    with open(f"{prefix}.json", "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
