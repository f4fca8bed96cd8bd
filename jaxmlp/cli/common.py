"""What every subcommand shares: one-line errors, the data flags, output checks, metrics JSON."""
from __future__ import annotations

import argparse
import os
import re
import sys

from jaxmlp.config import DATASET_NAMES, hidden_sizes

# Library errors name Python arguments; the command line words them as the flags that set them, here and
# nowhere else. A config field is TrainConfig.field_name (the rule: --field-name); any other argument is
# written "function: argument" where it leads its message, or as one of the bare names below; "=value"
# after a name becomes " value", as the flag takes it (a string value without its quotes).
FLAGS = {
    "initialize: coordinator": "--coordinator", "initialize: num_processes": "--num-processes",
    "initialize: process_id": "--process-id", "num_processes": "--num-processes", "process_id": "--process-id",
    "make_mesh: num_devices": "--devices", "mesh.devices.size": "--devices",
    "data_parallel_spec: spec.batch_size": "--batch-size", "fit_ensemble: members": "--ensemble",
    "random_search: num_trials": "--random", "preset_config: name": "--preset",
    "schedule_by_name: name": "--schedule", "matmul_precision: setting": "--matmul-precision",
    "select_classes: classes": "--classes", "trainable_mask: freeze": "--freeze",
    "load_bench_data: train_size": "--train-size", "download: mirrors": "--mirror",
    "a lower learning rate": "a lower --lr", "divergence=False": "--no-divergence-check",
}
# Not inside a word, a dotted name or (the bare names) a path; then an optional =value ('quoted' or up to
# the next space).
_PYTHON_NAME = re.compile(r"((?<![\w.])TrainConfig\.\w+|(?<![\w./\\-])(?:"
                          + "|".join(map(re.escape, sorted(FLAGS, key=len, reverse=True)))
                          + r"))(?![\w\\-])(?:='([^'\s]*)'|(=)(?=\S))?")


def flag_words(message: str) -> str:
    """A library ``message`` worded for the command line: ``TrainConfig.batch_size`` -> ``--batch-size``,
    ``make_mesh: num_devices=4: ...`` -> ``--devices 4: ...`` (see ``FLAGS``)."""
    def flag(m: re.Match) -> str:
        name = m[1]
        word = "--" + name[len("TrainConfig."):].replace("_", "-") if name.startswith("TrainConfig.") else FLAGS[name]
        return f"{word} {m[2]}" if m[2] is not None else word + (" " if m[3] else "")

    return _PYTHON_NAME.sub(flag, message)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class UsageError(CLIError):
    """Bad flags: exit status 2, as argparse does."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints the whole usage block; one line is clearer
        where = self.prog.removeprefix("jaxmlp").strip()
        raise UsageError(f"{where + ': ' if where else ''}{message} (see --help)")


def subcommand(sub, name: str, run, summary: str) -> argparse.ArgumentParser:
    """Declare subcommand ``name``: ``summary`` in ``jaxmlp --help``, ``run``'s docstring as its description."""
    import inspect

    description = " ".join(inspect.cleandoc(run.__doc__ or summary).split())
    p = sub.add_parser(name, help=summary, description=description)
    p.set_defaults(func=run)
    return p


def hidden_token(value: str) -> str:
    """One word of ``--hidden`` ("128" or "256,128"), checked as argparse reads it (so a bad size is a
    usage error) and kept as text for ``config.hidden_sizes``."""
    hidden_sizes(value)
    return value


def stopped_at(epoch: int, step: int) -> str:
    """Where a stopped run's state stands, in words: "after epoch 3", "in epoch 4 after step 10"."""
    return f"after epoch {epoch}" if step == 0 else f"in epoch {epoch + 1} after step {step}"


def say(text: str) -> None:
    """Progress and diagnostics go to stderr, so stdout holds only results."""
    print(text, file=sys.stderr, flush=True)


def add_data_flags(p, dataset_default: str | None = "mnist") -> None:
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (default: $JAXMLP_DATA_DIR, else the cache "
                        "~/.cache/jaxmlp/DATASET, downloaded there on first use)")
    shown = f"default: {dataset_default}" if dataset_default else "default: the checkpoint's"
    p.add_argument("--dataset", default=dataset_default, choices=DATASET_NAMES, help=f"dataset name ({shown})")


def add_metrics_flag(p, what: str = "a JSON summary of the run") -> None:
    p.add_argument("--metrics-out", metavar="FILE", default=None, help=f"write {what} to FILE")


OUTPUT_FLAGS = {"save": False, "metrics_out": False, "log": False, "plot_dir": True, "manifest": False}


def check_outputs(args) -> None:
    """Refuse, before any work, output paths that cannot be written (a folder named as a file, a file
    in the way of a folder, an unwritable parent)."""
    from jaxmlp.fileio import check_writable

    for name, folder in OUTPUT_FLAGS.items():
        path = getattr(args, name, None)
        if path:
            check_writable(path, "--" + name.replace("_", "-"), folder=folder)


def environment() -> dict:
    """Backend, device and process counts and versions, for every metrics JSON."""
    import jax

    from jaxmlp.parallel import process_info

    return {"backend": jax.default_backend(), **process_info(), "jax_version": jax.__version__}


def write_metrics(path, record: dict) -> None:
    from jaxmlp.fileio import write_json
    from jaxmlp.parallel import is_primary

    if path and is_primary():
        write_json(path, {**record, **environment()})


def one_line(err: BaseException) -> str:
    """The first line of ``err``'s message, worded with the command line's flags (``flag_words``)."""
    text = flag_words(str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


def debug() -> bool:
    return os.environ.get("JAXMLP_DEBUG") not in (None, "", "0")
