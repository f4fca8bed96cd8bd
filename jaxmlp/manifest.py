"""Run manifests: what a run was and what it produced, epoch by epoch, so that it can be rerun and checked.

A manifest (JSON) holds the full config, the SHA-256 of the data files, the environment (python, jax,
jaxlib, numpy and jaxmlp versions, backend, device kind, CPU model, XLA flags), the seed, and for every
epoch ``{"epoch", "params_sha256", "loss"}``: a hash of the params' bytes after that epoch
(``params_sha256``). ``jaxmlp train --manifest FILE`` and every ``jaxmlp reproduce`` row write one;
``verify`` (``jaxmlp verify FILE``) reruns the run on the same data and reports either that every
epoch's params are bit-identical, or the first epoch that differs and what in the environment differs
from the manifest.

What is bit-reproducible where: a run is a pure function of its config, its data and its seed (every
shuffle and every step's key derive from the seed; chunk sizes and stops and resumes change nothing),
so on the same machine with the same versions (and the same XLA flags) its params are the same bits,
float32 or float64. Another CPU model, another backend or another jax/jaxlib can change the bits:
XLA picks different kernels and sums in a different order. The float64 notebook mode
(``--notebook-exact``, ``reproduce seed``) reproduces the notebook's printed digits everywhere, but its
bits are guaranteed only where the float32 runs' are.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .events import Event, StopRun

__all__ = ["MANIFEST_VERSION", "params_sha256", "EpochRecorder", "environment", "data_record", "build_manifest",
           "write_manifest", "read_manifest", "environment_differences", "VerifyReport", "verify"]

MANIFEST_VERSION = 1
KINDS = ("train", "notebook")  # runs.fit of a TrainConfig; the notebook's float64 run (notebook.fit_notebook_group)
ENVIRONMENT_KEYS = ("python", "jax", "jaxlib", "numpy", "jaxmlp", "backend", "device", "device_count", "cpu", "cores",
                    "system", "xla_flags", "jax_env")


def params_sha256(params: Any) -> str:
    """SHA-256 (hex) of a params PyTree's bytes, copied to the host: for each leaf in tree order, its
    dtype and shape, then its C-order bytes.

    Args:
        params: any PyTree of arrays (jax or NumPy).
    """
    from .parallel import to_host

    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(to_host(params)):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class EpochRecorder:
    """An engine handler (and, through ``add``, a notebook-run callback) that records every epoch's
    ``{"epoch", "params_sha256", "loss"}`` in ``epochs``.

    Args:
        expected: a manifest's epoch records to compare with (None: only record). At the first epoch
            whose hash differs, ``difference`` holds ``(expected record, rerun record)`` and the run is
            stopped there (``events.StopRun``).
        on_record: called with each new record (progress lines).
    """

    def __init__(self, expected: Sequence[dict] | None = None, on_record: Callable[[dict], None] | None = None):
        self.epochs: list[dict] = []
        self.expected = None if expected is None else {int(e["epoch"]): e for e in expected}
        self.on_record = on_record
        self.difference: tuple[dict, dict] | None = None

    def add(self, epoch: int, params: Any, loss: float) -> None:
        """Record epoch ``epoch`` (its params after it, its mean training loss); StopRun at a difference."""
        record = {"epoch": int(epoch), "params_sha256": params_sha256(params), "loss": float(loss)}
        self.epochs.append(record)
        if self.on_record is not None:
            self.on_record(record)
        want = None if self.expected is None else self.expected.get(record["epoch"])  # type: ignore[call-overload]
        if want is not None and want["params_sha256"] != record["params_sha256"]:
            self.difference = (want, record)
            raise StopRun("differs")

    def __call__(self, event: Event) -> None:
        if event.kind == "epoch":
            self.add(int(event.state.epoch), event.state.params, event.history[-1]["loss"])


def environment() -> dict:
    """What can change a run's bits: versions, backend, device kind, CPU model, XLA flags and the JAX_*
    variables (``bench.machine_info`` plus the flags)."""
    from . import __version__
    from .bench import machine_info

    info = machine_info()
    jax_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("JAX_") and k != "JAX_PLATFORMS"}
    return {**{k: info[k] for k in ENVIRONMENT_KEYS if k in info}, "jaxmlp": __version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_env": jax_env}


def data_record(data_dir: str | os.PathLike | None, dataset: str = "mnist") -> dict:
    """The SHA-256 of the dataset's four files, found as the loader finds them (``data_dir``, else
    ``$JAXMLP_DATA_DIR``, else the cache); hashes remembered by ``data.verify`` are reused.

    Args:
        data_dir: the folder given (None: as ``jaxmlp.data`` says).
        dataset: a registered dataset name.

    Returns ``{"dataset", "files": [{"name", "sha256", "content_sha256"}, ...]}`` (``content_sha256``: of
    the decompressed bytes; the folder's path is not recorded).
    """
    from .data.locate import find_all, locate
    from .data.verify import cached_digests

    folder, source = locate(data_dir, dataset)
    paths = find_all(folder, dataset, source)
    files = [{"name": p.name, "sha256": d["sha256"], "content_sha256": d.get("content_sha256")}
             for p, d in zip(paths, cached_digests(paths))]
    return {"dataset": dataset, "files": files}


def build_manifest(kind: str, config: dict, seed: int, data: dict, epochs: Sequence[dict],
                   result: dict | None = None, **extra) -> dict:
    """A manifest (JSON-ready dict) of a finished run.

    Args:
        kind: "train" (``config`` is a ``TrainConfig.to_dict()``) or "notebook" (the notebook's settings).
        config: the run's full settings.
        seed: its PRNG seed.
        data: ``data_record`` of its data.
        epochs: ``EpochRecorder.epochs``.
        result: test loss and accuracy, times.
        **extra: other top-level entries (``divergence_rule``, ``devices``, ``group``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return {"manifest_version": MANIFEST_VERSION, "kind": kind, "config": config, "seed": int(seed), "data": data,
            "environment": environment(), "epochs": list(epochs), "result": result or {}, **extra}


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest`` to ``path`` atomically (``fileio.write_json``).

    Args:
        path: the JSON file.
        manifest: from ``build_manifest``.
    """
    from .fileio import write_json

    return write_json(path, manifest)


def _check(path, m: Any) -> dict:
    if not isinstance(m, dict):
        raise ValueError(f"{path}: not a jaxmlp manifest (expected a JSON object)")
    if m.get("manifest_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: not a jaxmlp manifest of version {MANIFEST_VERSION} "
                         f"(manifest_version is {m.get('manifest_version')!r})")
    if m.get("kind") not in KINDS or not isinstance(m.get("config"), dict):
        raise ValueError(f"{path}: 'kind' must be one of {', '.join(KINDS)} and 'config' an object")
    files = (m.get("data") or {}).get("files") if isinstance(m.get("data"), dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in files):
        raise ValueError(f"{path}: 'data' must list the data files with their SHA-256")
    epochs = m.get("epochs")
    if not isinstance(epochs, list) or not epochs:
        raise ValueError(f"{path}: 'epochs' must list at least one epoch")
    for e in epochs:
        ok = isinstance(e, dict) and isinstance(e.get("epoch"), int) and isinstance(e.get("params_sha256"), str)
        if not ok or len(e["params_sha256"]) != 64:
            raise ValueError(f"{path}: every epoch needs an integer 'epoch' and a 64-digit 'params_sha256', got {e!r}")
    if not isinstance(m.get("environment"), dict):
        raise ValueError(f"{path}: 'environment' must be an object")
    return m


def read_manifest(path: str | os.PathLike) -> dict:
    """A manifest read and checked; one-line ValueError naming ``path`` when it is not one.

    Args:
        path: the JSON file ``write_manifest`` wrote.
    """
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    return _check(path, m)


def environment_differences(recorded: dict, now: dict | None = None) -> list[str]:
    """``"name: recorded -> now"`` for every environment entry that differs.

    Args:
        recorded: a manifest's ``environment``.
        now: this process's (default: ``environment()``).
    """
    now = environment() if now is None else now
    return [f"{k}: {recorded.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)]


def _check_data(path, recorded: dict, data_dir) -> None:
    """ValueError naming the first file whose contents differ from the manifest's."""
    found = data_record(data_dir, recorded.get("dataset", "mnist"))
    for want, got in zip(recorded["files"], found["files"]):
        key = "content_sha256" if want.get("content_sha256") and got.get("content_sha256") else "sha256"
        if want.get(key) != got.get(key):
            raise ValueError(f"{path}: the data differ from the manifest's: {got['name']} has SHA-256 "
                             f"{str(got.get(key))[:16]}..., the manifest recorded {str(want.get(key))[:16]}... for "
                             f"{want['name']}; verify reruns only on the same data (see --data-dir)")


class VerifyReport(NamedTuple):
    """What ``verify`` found.

    identical: every epoch of the manifest was rerun and its params hash matched.
    checked: epoch records of the rerun that matched the manifest.
    difference: None, or ``(manifest's record, rerun's record)`` of the first epoch that differs (the
    rerun's record is None when the rerun ended before that epoch).
    environment: ``environment_differences`` between the manifest and this process.
    """

    identical: bool
    checked: int
    difference: tuple | None
    environment: list


def verify(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
           on_record: Callable[[dict], None] | None = None) -> VerifyReport:
    """Rerun the run of manifest ``path`` on the same data and compare every epoch's params hash.

    Args:
        path: a manifest from ``jaxmlp train --manifest`` or ``jaxmlp reproduce``.
        data_dir: the data folder (None: found as usual); its files must hash as the manifest says.
        on_record: called with each rerun epoch's record.

    The rerun stops at the first epoch that differs. ValueError (one line) for a file that is not a
    manifest or data that differ.
    """
    m = read_manifest(path)
    _check_data(path, m["data"], data_dir)
    recorder = EpochRecorder(m["epochs"], on_record)
    if m["kind"] == "train":
        _rerun_train(path, m, data_dir, recorder)
    else:
        _rerun_notebook(path, m, data_dir, recorder)
    difference = recorder.difference
    if difference is None:
        done = {e["epoch"] for e in recorder.epochs}
        missing = [e for e in m["epochs"] if e["epoch"] not in done]
        difference = (missing[0], None) if missing else None  # type: ignore[assignment]
    expected = recorder.expected or {}
    checked = sum(1 for e in recorder.epochs
                  if expected.get(e["epoch"], {}).get("params_sha256") == e["params_sha256"])
    return VerifyReport(difference is None, checked, difference, environment_differences(m["environment"]))


def _rerun_train(path, m: dict, data_dir, recorder: EpochRecorder) -> None:
    from .config import TrainConfig
    from .data import ensure_dataset
    from .parallel import mesh_for
    from .runs import fit

    config = TrainConfig.from_dict(m["config"], where=f"{path}: config")
    devices = int(m.get("devices", 1))
    data = ensure_dataset(data_dir, config.dataset)
    fit(config, data, handlers=[recorder], mesh=mesh_for(devices) if devices > 1 else None,
        divergence_rule=bool(m.get("divergence_rule", True)))


def _rerun_notebook(path, m: dict, data_dir, recorder: EpochRecorder) -> None:
    from .data import ensure_dataset
    from .notebook import fit_notebook_group

    c = m["config"]
    try:
        group = [float(v) for v in m.get("group") or [c["lr"]]]
        member = group.index(float(c["lr"]))
        settings = {k: c[k] for k in ("batch_size", "epochs", "seed", "hidden")}
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: a notebook manifest needs lr, batch_size, epochs, seed and hidden in its config, "
                         f"and its lr in 'group'") from None
    data = ensure_dataset(data_dir, c.get("dataset", "mnist"))

    def on_epoch(epoch, params, records):
        recorder.add(epoch, params[member], records[member]["loss"])

    fit_notebook_group(data, group, **settings, replay_step=bool(c.get("replay_step", False)), on_epoch=on_epoch)
