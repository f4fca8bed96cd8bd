"""Reading a run manifest (``read_manifest``): every field's type and meaning checked before anything
is rerun, so an edited or damaged manifest is one ValueError naming the file and the field, never a
traceback and never a verification of something else. ``jaxmlp.manifest`` writes and verifies them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["read_manifest", "MANIFEST_VERSION", "KINDS"]

MANIFEST_VERSION = 1
KINDS = ("train", "notebook")  # runs.fit of a TrainConfig; the notebook's float64 run (notebook.fit_notebook_group)
ENVIRONMENT_KEYS = ("python", "jax", "jaxlib", "numpy", "jaxmlp", "backend", "device", "device_count", "cpu", "cores",
                    "system", "xla_flags", "jax_env")
MAX_MANIFEST_BYTES = 64 << 20  # a 1,000-epoch manifest is about 150 kB
REQUIRED = ("manifest_version", "kind", "config", "seed", "data", "environment", "epochs")
OPTIONAL = {"train": ("result", "row", "divergence_rule", "devices", "inputs"), "notebook": ("result", "row", "group")}
NOTEBOOK_CONFIG = ("lr", "batch_size", "epochs", "seed", "hidden")  # and optionally dataset, replay_step


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")


def _expect(path, where: str, value: Any, ok: bool, what: str) -> None:
    """ValueError naming the file and the field unless ``ok``."""
    if not ok:
        raise ValueError(f"{path}: {where}: expected {what}, got {_short(value)}")


def _object(path, where: str, value: Any, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """``value``, an object with every ``required`` field and no field but those and ``optional``."""
    _expect(path, where, value, isinstance(value, dict), "an object")
    missing = [k for k in required if k not in value]
    unknown = sorted(set(value) - set(required) - set(optional))
    if missing:
        raise ValueError(f"{path}: {where}: the field {missing[0]!r} is missing")
    if unknown:
        raise ValueError(f"{path}: {where}: unknown field {unknown[0]!r}")
    return value


def _same(value: Any, canonical: Any) -> bool:
    """Whether ``value`` says what ``canonical`` says, in a type JSON gives it (an integer for a float)."""
    if isinstance(canonical, list):
        return isinstance(value, list) and len(value) == len(canonical) and all(map(_same, value, canonical))
    if isinstance(canonical, float) and _is_int(value):
        return value == canonical
    return type(value) is type(canonical) and value == canonical


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _checked_config(path, kind: str, config: Any) -> dict:
    """The manifest's config, every setting checked as ``TrainConfig`` checks it and recorded as jaxmlp
    records it (``"epochs": "1"`` is refused); returns its settings with the defaults filled in."""
    from .config import TrainConfig

    if kind == "notebook":
        _object(path, "config", config, NOTEBOOK_CONFIG, ("dataset", "replay_step"))
        _expect(path, "config.replay_step", config.get("replay_step"),
                isinstance(config.get("replay_step", False), bool), "true or false")
        values = {k: v for k, v in config.items() if k != "replay_step"}
    else:
        _expect(path, "config", config, isinstance(config, dict), "an object")
        values = config
    canonical = TrainConfig.from_dict(values, where=f"{path}: config").to_dict()
    for k, v in values.items():
        if not _same(v, canonical[k]):
            want = _type_name(canonical[k])
            raise ValueError(f"{path}: config.{k}: expected {want}, got {_short(v)}" if _type_name(v) != want else
                             f"{path}: config.{k}: expected {_short(canonical[k])} (as jaxmlp records it), got "
                             f"{_short(v)}")
    return canonical


def _check_epochs(path, epochs: Any, last_epoch: int) -> None:
    _expect(path, "epochs", epochs, isinstance(epochs, list) and len(epochs) > 0, "a list of at least one epoch")
    previous = 0  # consecutive epochs, from the first recorded (a resumed run's records start later)
    for i, e in enumerate(epochs):
        where = f"epochs[{i}]"
        _object(path, where, e, ("epoch", "params_sha256", "loss"))
        number = e["epoch"]
        if previous:
            ok, what = number == previous + 1, f"{previous + 1}, the epoch after epochs[{i - 1}]'s"
        else:
            ok, what = _is_int(number) and number >= 1, "an epoch number"
        _expect(path, f"{where}.epoch", number, ok and number <= last_epoch,
                f"{what}, at most config.epochs ({last_epoch})")
        previous = number
        _expect(path, f"{where}.params_sha256", e["params_sha256"], _is_sha256(e["params_sha256"]),
                "a 64-digit SHA-256")
        _expect(path, f"{where}.loss", e["loss"], _is_number(e["loss"]), "a number")


def _check_data_record(path, data: Any, dataset: str) -> None:
    _object(path, "data", data, ("dataset", "files"))
    _expect(path, "data.dataset", data["dataset"], _same(data["dataset"], dataset),
            f"config.dataset, {dataset!r}")
    files = data["files"]
    _expect(path, "data.files", files, isinstance(files, list) and len(files) > 0,
            "a list of the data files with their SHA-256")
    for i, f in enumerate(files):
        where = f"data.files[{i}]"
        _object(path, where, f, ("name", "sha256"), ("content_sha256",))
        _expect(path, f"{where}.name", f["name"], isinstance(f["name"], str), "a string")
        _expect(path, f"{where}.sha256", f["sha256"], _is_sha256(f["sha256"]), "a 64-digit SHA-256")
        content = f.get("content_sha256")
        _expect(path, f"{where}.content_sha256", content, content in (None, "") or _is_sha256(content),
                "a 64-digit SHA-256 or null")


def _check_inputs_record(path, inputs: Any, source: str | None) -> None:
    """``inputs``: the checkpoints the run reads, by absolute path and SHA-256, config.finetune first."""
    _expect(path, "inputs", inputs, isinstance(inputs, list), "a list")
    for i, e in enumerate(inputs):
        where = f"inputs[{i}]"
        _object(path, where, e, ("path", "sha256"))
        _expect(path, f"{where}.path", e["path"], isinstance(e["path"], str) and os.path.isabs(e["path"]),
                "an absolute path")
        _expect(path, f"{where}.sha256", e["sha256"], _is_sha256(e["sha256"]), "a 64-digit SHA-256")
    if source is None and inputs:
        raise ValueError(f"{path}: inputs: the config reads no checkpoint (config.finetune is null), yet inputs "
                         f"lists {inputs[0]['path']}")
    if source is not None and (not inputs or inputs[0]["path"] != source):
        raise ValueError(f"{path}: config.finetune: the fine-tune source {source} must be recorded by its absolute "
                         f"path and SHA-256 as inputs[0] (write the manifest again with this jaxmlp)")


def _check(path, m: Any) -> dict:
    """``m`` (a parsed manifest) with every field checked; one-line ValueError naming ``path`` and the field."""
    if not isinstance(m, dict):
        raise ValueError(f"{path}: not a jaxmlp manifest (expected a JSON object)")
    if not _is_int(m.get("manifest_version")) or m["manifest_version"] != MANIFEST_VERSION:
        raise ValueError(f"{path}: not a jaxmlp manifest of version {MANIFEST_VERSION} "
                         f"(manifest_version is {_short(m.get('manifest_version'))})")
    _expect(path, "kind", m.get("kind"), m.get("kind") in KINDS, f"one of {', '.join(KINDS)}")
    kind = m["kind"]
    _object(path, "the manifest", m, REQUIRED, OPTIONAL[kind])
    config = _checked_config(path, kind, m["config"])
    if not _same(m["seed"], config["seed"]):  # a restatement of the config: it may not say otherwise
        raise ValueError(f"{path}: seed: {_short(m['seed'])} disagrees with config.seed {config['seed']}; the "
                         f"manifest's seed restates its config's")
    _check_data_record(path, m["data"], config["dataset"])
    _check_epochs(path, m["epochs"], config["epochs"])
    _expect(path, "environment", m["environment"], isinstance(m["environment"], dict), "an object")
    _expect(path, "result", m.get("result"), isinstance(m.get("result", {}), dict), "an object")
    _expect(path, "row", m.get("row"), isinstance(m.get("row", ""), str), "a string")
    if kind == "train":
        _expect(path, "devices", m.get("devices"), _is_int(m.get("devices", 1)) and m.get("devices", 1) >= 1,
                "a positive integer")
        _expect(path, "divergence_rule", m.get("divergence_rule"), isinstance(m.get("divergence_rule", True), bool),
                "true or false")
        _check_inputs_record(path, m.get("inputs", []), config["finetune"])
    else:
        group = m.get("group", [config["lr"]])
        _expect(path, "group", group, isinstance(group, list) and len(group) > 0 and all(
            _is_number(v) and v > 0 for v in group), "a list of positive learning rates")
        _expect(path, "group", group, any(_same(v, config["lr"]) for v in group), f"a list holding config.lr "
                f"({config['lr']})")
    return m


def _no_repeated_keys(pairs: list) -> dict:
    """A JSON object's pairs as a dict; ValueError when a key appears twice (which one would count?)."""
    seen: set = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the field {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def read_manifest(path: str | os.PathLike) -> dict:
    """A manifest read and checked (``_check``); one-line ValueError naming ``path`` (and the field) when
    it cannot be read or is not one.

    Args:
        path: the JSON file ``write_manifest`` wrote.

    Returns:
        The manifest dict.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path}: not a jaxmlp manifest (more than {MAX_MANIFEST_BYTES:,} bytes)")
    try:
        m = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeated_keys)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a jaxmlp manifest (not UTF-8 text: byte {raw[err.start]:#04x} at offset "
                         f"{err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not a jaxmlp manifest ({err})") from None
    return _check(path, m)
