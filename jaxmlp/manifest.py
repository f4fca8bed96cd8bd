"""Run manifests: what a run was and what it produced, epoch by epoch, so that it can be rerun and checked.

A manifest (JSON) holds the full config, the SHA-256 of the data files, the absolute path and SHA-256 of
every checkpoint the run reads (``inputs``: a fine-tune source), the environment (python, jax, jaxlib,
numpy and jaxmlp versions, backend, device kind, CPU model, XLA flags), the seed, and for every epoch
``{"epoch", "params_sha256", "loss"}``: a hash of the params' bytes after that epoch (``params_sha256``).
``jaxmlp train --manifest FILE`` and every ``jaxmlp reproduce`` row write one; ``verify`` (``jaxmlp verify
FILE``) reruns the run on the same data and inputs and reports either that every epoch's params are
bit-identical, or the first epoch that differs and what in the environment differs from the manifest. A
manifest is checked before anything is rerun: every field's type, no unknown field, the seed and dataset
agreeing with the config they restate, the data and the inputs hashing as recorded.

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
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from .events import Event, StopRun
from .manifest_schema import ENVIRONMENT_KEYS, KINDS, MANIFEST_VERSION, read_manifest  # noqa: F401  (re-exported)

__all__ = ["MANIFEST_VERSION", "params_sha256", "EpochRecorder", "environment", "data_record", "input_records",
           "build_manifest", "write_manifest", "read_manifest", "environment_differences", "VerifyReport", "verify"]




def params_sha256(params: Any) -> str:
    """SHA-256 (hex) of a params PyTree's bytes, copied to the host: for each leaf in tree order, its
    dtype and shape, then its C-order bytes.

    Args:
        params: any PyTree of arrays (jax or NumPy).

    Returns:
        The hex digest.
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
        """Record an epoch; StopRun at a difference from ``expected``.

        Args:
            epoch: the epoch's number (1 for the first).
            params: its params after it.
            loss: its mean training loss.
        """
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
    """What can change a run's bits.

    Returns:
        The versions, backend, device kind, CPU model, XLA flags and the JAX_* variables
        (``bench.machine_info`` plus the flags), as a JSON-ready dict.
    """
    from ._version import __version__
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

    Returns:
        ``{"dataset", "files": [{"name", "sha256", "content_sha256"}, ...]}`` (``content_sha256``: of the
        decompressed bytes; the folder's path is not recorded).
    """
    from .data.locate import find_all, locate
    from .data.verify import cached_digests

    folder, source = locate(data_dir, dataset)
    paths = find_all(folder, dataset, source)
    files = [{"name": p.name, "sha256": d["sha256"], "content_sha256": d.get("content_sha256")}
             for p, d in zip(paths, cached_digests(paths))]
    return {"dataset": dataset, "files": files}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_paths(source: str | os.PathLike) -> list[Path]:
    """The files a run fine-tuned from checkpoint ``source`` reads, absolute: the checkpoint, and the best
    params it names beside itself (``handlers.best_params``) when it names them."""
    from .checkpoint import read_meta

    checkpoint = Path(source).resolve()
    best = (read_meta(checkpoint).get("partial") or {}).get("best")
    named = best.get("file") if isinstance(best, dict) else None
    return [checkpoint] + ([checkpoint.with_name(named)] if isinstance(named, str) else [])


def input_records(config: dict) -> list[dict]:
    """The checkpoints a train config reads: its ``finetune`` source and that source's best params
    (``input_paths``).

    Args:
        config: a ``TrainConfig.to_dict()``; a relative ``finetune`` is taken from the working folder.

    Returns:
        ``[{"path", "sha256"}, ...]``; [] for a run that reads none.
    """
    source = config.get("finetune")
    if not source:
        return []
    records = []
    for p in input_paths(source):
        try:
            records.append({"path": str(p), "sha256": file_sha256(p)})
        except OSError as err:
            raise ValueError(f"fine-tune source {p}: cannot be read to record it in the manifest "
                             f"({err.strerror or err})") from None
    return records


def build_manifest(kind: str, config: dict, seed: int, data: dict, epochs: Sequence[dict],
                   result: dict | None = None, **extra) -> dict:
    """A manifest (JSON-ready dict) of a finished run.

    Args:
        kind: "train" (``config`` is a ``TrainConfig.to_dict()``) or "notebook" (the notebook's settings).
        config: the run's full settings; a fine-tune source is recorded by its absolute path, and it and the
            files it names by their SHA-256 in ``inputs`` (``input_records``).
        seed: its PRNG seed.
        data: ``data_record`` of its data.
        epochs: ``EpochRecorder.epochs``.
        result: test loss and accuracy, times.
        **extra: other top-level entries (``divergence_rule``, ``devices``, ``group``).

    Returns:
        The manifest, with this process's ``environment()``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "train" and config.get("finetune"):
        config = {**config, "finetune": str(Path(config["finetune"]).resolve())}
        extra = {**extra, "inputs": input_records(config)}
    return {"manifest_version": MANIFEST_VERSION, "kind": kind, "config": config, "seed": int(seed), "data": data,
            "environment": environment(), "epochs": list(epochs), "result": result or {}, **extra}


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest`` to ``path`` atomically (``fileio.write_json``).

    Args:
        path: the JSON file.
        manifest: from ``build_manifest``.

    Returns:
        The path written.
    """
    from .fileio import write_json

    return write_json(path, manifest)


def environment_differences(recorded: dict, now: dict | None = None) -> list[str]:
    """The environment entries that differ between a manifest and now.

    Args:
        recorded: a manifest's ``environment``.
        now: this process's (default: ``environment()``).

    Returns:
        ``"name: recorded -> now"`` for every entry that differs, sorted by name.
    """
    now = environment() if now is None else now
    return [f"{k}: {recorded.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)]


def _check_data(path, recorded: dict, data_dir) -> None:
    """ValueError naming the first file whose contents differ from the manifest's."""
    found = data_record(data_dir, recorded.get("dataset", "mnist"))
    if len(recorded["files"]) != len(found["files"]):
        raise ValueError(f"{path}: data.files lists {len(recorded['files'])} files, {recorded['dataset']} has "
                         f"{len(found['files'])} ({', '.join(f['name'] for f in found['files'])})")
    for want, got in zip(recorded["files"], found["files"]):
        key = "content_sha256" if want.get("content_sha256") and got.get("content_sha256") else "sha256"
        if want.get(key) != got.get(key):
            raise ValueError(f"{path}: the data differ from the manifest's: {got['name']} has SHA-256 "
                             f"{str(got.get(key))[:16]}..., the manifest recorded {str(want.get(key))[:16]}... for "
                             f"{want['name']}; verify reruns only on the same data (see --data-dir)")


def _check_inputs(path, inputs: list, source: str | None) -> None:
    """ValueError naming the first checkpoint the run reads that is missing or whose SHA-256 differs from
    the manifest's, or when the manifest does not list every one (``input_paths``)."""
    for record in inputs:
        try:
            digest = file_sha256(record["path"])
        except FileNotFoundError:
            raise ValueError(f"{path}: fine-tune source {record['path']}: missing (the run read it; verify needs it "
                             f"there)") from None
        except OSError as err:
            raise ValueError(f"{path}: fine-tune source {record['path']}: cannot be read ({err.strerror or err})") \
                from None
        if digest != record["sha256"]:
            raise ValueError(f"{path}: fine-tune source {record['path']}: sha256 differs from the manifest's (the "
                             f"run's input changed)")
    reads = [str(p) for p in input_paths(source)] if source else []
    if reads != [record["path"] for record in inputs]:
        raise ValueError(f"{path}: inputs must list every checkpoint the run reads: {', '.join(reads)}")


class VerifyReport(NamedTuple):
    """What ``verify`` found.

    Attributes:
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

    Returns:
        A ``VerifyReport``. The rerun stops at the first epoch that differs. ValueError (one line, naming
        ``path``) for a file that is not a manifest (``read_manifest``), data or a fine-tune source that
        differ from the manifest's or are missing (checked before the rerun), or epochs that end before
        the rerun's do.
    """
    m = read_manifest(path)
    if m["kind"] == "train":
        _check_inputs(path, m.get("inputs", []), m["config"].get("finetune"))
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
        beyond = [e["epoch"] for e in recorder.epochs if e["epoch"] > m["epochs"][-1]["epoch"]]
        if difference is None and beyond:
            raise ValueError(f"{path}: epochs: the manifest ends at epoch {m['epochs'][-1]['epoch']}, but its run "
                             f"goes on to epoch {beyond[-1]}")
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
        divergence=bool(m.get("divergence_rule", True)))


def _rerun_notebook(path, m: dict, data_dir, recorder: EpochRecorder) -> None:
    from .data import ensure_dataset
    from .notebook import fit_notebook_group

    c = m["config"]  # checked by read_manifest: these fields are there, of their types, lr in the group
    group = [float(v) for v in m.get("group", [c["lr"]])]
    member = group.index(float(c["lr"]))
    settings = {k: c[k] for k in ("batch_size", "epochs", "seed", "hidden")}
    data = ensure_dataset(data_dir, c.get("dataset", "mnist"))

    def on_epoch(epoch, params, records):
        recorder.add(epoch, params[member], records[member]["loss"])

    fit_notebook_group(data, group, **settings, replay_step=bool(c.get("replay_step", False)), on_epoch=on_epoch)
