"""The flag matrix's machinery: modes, the values of every flag, the world the cells run in, what a run
produces. The cells themselves are in tests/test_matrix.py (single runs) and tests/test_matrix_groups.py
(vmapped groups, tools): two modules, so the two xdist workers share them.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jaxmlp.cli import build_parser, main
from jaxmlp.data import write_idx

CHANGES, REFUSED = "changes", "refused"
N_TRAIN, N_TEST = 64, 32


class V(NamedTuple):
    """One cell's value of a flag: ``values`` after the flag (none for a switch); ``ctx``: options set
    in both runs compared (what the flag needs to matter); ``drop``: base options removed from both;
    ``expect``: CHANGES/REFUSED for every mode, a {mode: expectation} dict, or None (the mode's rule)."""

    values: tuple = ()
    ctx: dict = {}
    drop: tuple = ()
    expect: str | dict | None = None


def v(*values, ctx=None, drop=(), expect=None) -> V:
    return V(tuple(str(x) for x in values), ctx or {}, tuple(drop), expect)


# ---------------------------------------------------------------- the run modes


class Mode(NamedTuple):
    command: str
    base: dict             # option -> values (a list; [] for a switch), in order
    accepts: frozenset     # options this mode honours; every other option of the command is REFUSED
    positional: tuple = ()


def _options(command: str) -> list[str]:
    """The option strings (long form) of a subcommand, from the parser itself."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return [max(a.option_strings, key=len) for a in sub._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


TRAIN_ALL = frozenset(_options("train"))
CONFIG_FLAGS = {"--arch", "--hidden", "--init", "--activation", "--dtype", "--matmul-precision", "--epochs",
                "--batch-size", "--lr", "--seed", "--optimizer", "--momentum", "--beta1", "--beta2",
                "--weight-decay", "--l2", "--schedule", "--warmup-epochs", "--dropout", "--augment", "--val-split",
                "--patience", "--grad", "--finetune", "--freeze", "--new-head", "--classes", "--elastic-sigma",
                "--elastic-alpha", "--max-norm", "--input-dropout"}
# One device in this process, no cluster: these are refused in every mode here (test_devices_mode runs
# --devices 2 where two devices exist; a cluster cannot be joined twice in one process).
NO_CLUSTER = {"--devices", "--coordinator", "--num-processes", "--process-id"}

MODES = {
    "train": Mode("train", {"--hidden": ["8"], "--epochs": ["1"], "--batch-size": ["32"], "--metrics-out": ["m.json"]},
                  TRAIN_ALL - NO_CLUSTER - {"--shared-order", "--replay-notebook-step", "--new-head"}),
    "notebook-exact": Mode("train", {"--notebook-exact": [], "--hidden": ["8"], "--epochs": ["1"],
                                     "--metrics-out": ["m.json"]},
                           frozenset({"--data-dir", "--dataset", "--hidden", "--epochs", "--batch-size", "--lr",
                                      "--seed",
                                      "--metrics-out", "--quiet", "--no-divergence-check", "--replay-notebook-step",
                                      "--notebook-exact", "--manifest"})),
    "ensemble": Mode("train", {"--ensemble": ["2"], "--hidden": ["8"], "--epochs": ["1"], "--metrics-out": ["m.json"]},
                     frozenset(CONFIG_FLAGS - {"--val-split", "--patience", "--finetune", "--freeze",
                                               "--new-head", "--classes"})
                     | {"--data-dir", "--dataset", "--preset", "--metrics-out", "--quiet", "--shared-order",
                        "--no-divergence-check", "--ensemble", "--save", "--resume", "--chunk-steps"}),
    "finetune": Mode("train", {"--finetune": ["@CK"], "--epochs": ["1"], "--metrics-out": ["m.json"]},
                     TRAIN_ALL - NO_CLUSTER - {"--shared-order", "--replay-notebook-step", "--arch", "--hidden",
                                               "--resume", "--notebook-exact", "--ensemble"}),
    "resume": Mode("train", {"--resume": ["@CK"], "--epochs": ["2"], "--metrics-out": ["m.json"]},
                   frozenset({"--data-dir", "--epochs", "--metrics-out", "--log", "--plot-dir", "--save",
                              "--save-every", "--quiet", "--chunk-steps", "--no-divergence-check", "--resume",
                              "--manifest"})),
    "sweep-grid": Mode("sweep", {"--lr": ["0.1"], "--seed": ["42", "43"], "--hidden": ["8"], "--epochs": ["1"],
                                 "--metrics-out": ["m.json"]},
                       frozenset(_options("sweep")) - {"--search-seed"}),
    "sweep-random": Mode("sweep", {"--random": ["2"], "--search-seed": ["1"], "--lr": ["0.05", "0.2"],
                                   "--seed": ["42", "43"],
                                   "--hidden": ["8"], "--epochs": ["1"], "--metrics-out": ["m.json"]},
                         frozenset(_options("sweep"))),
    "eval": Mode("eval", {"--load": ["@CK"], "--metrics-out": ["m.json"]}, frozenset(_options("eval"))),
    "predict": Mode("predict", {"--load": ["@CK"]}, frozenset(_options("predict")), ("@IMAGES",)),
    "bench": Mode("bench", {"--train-size": ["64"], "--large-batch": ["32"], "--hidden": ["8"],
                            "--metrics-out": ["m.json"]},
                  frozenset(_options("bench"))),
    "gradcheck": Mode("gradcheck", {"--hidden": ["8"], "--batch-size": ["8"], "--coords": ["2"]},
                      frozenset(_options("gradcheck"))),
    "download": Mode("download", {"--data-dir": ["got"], "--quiet": []}, frozenset(_options("download"))),
    "reproduce": Mode("reproduce", {"--rows": ["batch128"]}, frozenset(_options("reproduce")), ("seed",)),
    "verify": Mode("verify", {}, frozenset(_options("verify")), ("@MANIFEST",)),
}

# ---------------------------------------------------------------- the values of every flag

OPT_CTX = {"--optimizer": ["momentum"]}
ADAM_CTX = {"--optimizer": ["adam"]}
DIVERGING = {"--lr": ["200"]}  # the loss passes 10x its start but stays finite in one epoch
ELASTIC = {"--augment": ["elastic"]}
TANH = {"--activation": ["tanh"]}
ONE_SEED = {"--seed": ["42"]}
THREE_EPOCHS = {"--epochs": ["3"]}
SAVE_CTX = {"--save": ["ck.npz"], "--chunk-steps": ["1"]}  # a save every step, not only at the epoch's end

TRAIN_VALUES = {
    "--data-dir": [v("@OTHER")],
    "--dataset": [v("fashion-mnist")],
    "--preset": [v("fast-97")],
    "--arch": [v("cnn", drop=["--hidden"]), v("cnn", expect=REFUSED)],  # with --hidden: the CNN's layers are fixed
    "--hidden": [v(8, 8, 8)],
    "--init": [v("notebook")],
    "--activation": [v("tanh")],
    "--dtype": [v("float64"), v("bfloat16"), v("bfloat16", ctx={"--grad": ["manual"]}, expect=REFUSED)],
    "--matmul-precision": [v("highest"), v("highest", ctx={"--dtype": ["float64"]}, expect=REFUSED),
                           v("highest", ctx={"--dtype": ["bfloat16"]}, expect=REFUSED)],
    "--epochs": [v(3)],
    "--batch-size": [v(1), v(128)],  # one example per step; more than the data: one batch of all
    "--lr": [v(0.5)],
    "--seed": [v(7)],
    "--optimizer": [v("adam")],
    "--momentum": [v(0.5, ctx=OPT_CTX), v(0.5, expect=REFUSED)],  # plain SGD has no momentum
    "--beta1": [v(0.5, ctx=ADAM_CTX), v(0.5, expect=REFUSED)],
    "--beta2": [v(0.9, ctx=ADAM_CTX), v(0.9, expect=REFUSED)],
    "--weight-decay": [v(0.5)],
    "--l2": [v(0.5), v(0.5, ctx={"--grad": ["manual"], **TANH})],  # the manual backprop's L2 term
    "--schedule": [v("warmup-cosine", ctx=THREE_EPOCHS)],
    "--warmup-epochs": [v(1, ctx={"--schedule": ["warmup-cosine"], "--epochs": ["3"]}), v(1, expect=REFUSED)],
    "--dropout": [v(0.5)],
    "--input-dropout": [v(0.5), v(0.5, ctx={"--grad": ["manual"], **TANH}),
                        v(0.5, ctx={"--arch": ["cnn"]}, drop=["--hidden"])],
    "--augment": [v("shift")],
    "--elastic-sigma": [v(2, ctx=ELASTIC), v(2, expect=REFUSED)],
    "--elastic-alpha": [v(10, ctx=ELASTIC), v(10, expect=REFUSED)],
    "--max-norm": [v(0.05)],
    "--val-split": [v(0.25), v(0.001, expect=REFUSED), v(0.999999, expect=REFUSED)],
    "--patience": [v(1, ctx={"--val-split": ["0.25"], "--epochs": ["4"], "--lr": ["2"]}), v(1, expect=REFUSED)],
    "--grad": [v("manual", ctx=TANH)],  # with ReLU, XLA makes both gradients the same program: equal bits
    "--finetune": [v("@CK2")],
    "--freeze": [v(0)],
    "--new-head": [v(), v(ctx={"--classes": ["3", "5"]})],
    "--classes": [v(3, 5), v(3, 5, ctx={"--batch-size": ["128"]}),
                  v(3, 5, ctx={"--new-head": []}, expect={"finetune": CHANGES, "train": REFUSED})],
    "--notebook-exact": [v()],
    "--replay-notebook-step": [v()],
    "--metrics-out": [v("other.json")],
    "--log": [v("log.jsonl")],
    "--plot-dir": [v("plots"), v("plots", ctx={"--arch": ["cnn"]}, drop=["--hidden"])],
    "--save": [v("ck.npz")],
    "--save-every": [v(1, ctx=SAVE_CTX), v(1, expect=REFUSED)],
    "--resume": [v("@CK2", ctx={"--epochs": ["2"]})],
    "--quiet": [v()],
    "--manifest": [v("run.json")],
    "--chunk-steps": [v(1)],
    "--no-divergence-check": [v(ctx=DIVERGING)],
    "--ensemble": [v(2)],
    "--shared-order": [v()],
    "--devices": [v(2)],
    "--coordinator": [v("127.0.0.1:1")],
    "--num-processes": [v(1)],
    "--process-id": [v(0)],
}

# The same flag against the other modes: where the train value would not test it, another.
MODE_VALUES = {
    ("ensemble", "--classes"): [v(3, 5)],
    ("ensemble", "--new-head"): [v()],
    ("ensemble", "--plot-dir"): [v("plots")],
    ("ensemble", "--arch"): [v("cnn", expect=REFUSED)],
    ("ensemble", "--ensemble"): [v(1)],  # one member: the single run
    ("ensemble", "--resume"): [v("@ENS"), v("@CK2", expect=REFUSED)],  # the base ensemble saved: tested, not trained
    ("ensemble", "--chunk-steps"): [v(2)],  # 1 call an epoch instead of 2
    ("ensemble", "--elastic-sigma"): [v(2, expect=REFUSED)],  # elastic fields compile slowly: train's cells show them
    ("ensemble", "--elastic-alpha"): [v(10, expect=REFUSED)],  # --hidden given: refused before a 10 s CNN compile
    ("notebook-exact", "--arch"): [v("cnn")],
    ("notebook-exact", "--classes"): [v(3, 5)],
    ("notebook-exact", "--new-head"): [v()],
    ("notebook-exact", "--plot-dir"): [v("plots")],
    ("notebook-exact", "--matmul-precision"): [v("highest")],
    ("notebook-exact", "--batch-size"): [v(1), v(128)],
    ("finetune", "--new-head"): [v(), v(ctx={"--classes": ["3", "5"]})],
    ("finetune", "--finetune"): [v("@CK2")],
    ("finetune", "--arch"): [v("cnn")],
    ("finetune", "--plot-dir"): [v("plots")],
    ("finetune", "--input-dropout"): [v(0.5)],  # the checkpoint is an MLP's: no CNN cell here
    ("finetune", "--optimizer"): [v("adam", ctx={"--lr": ["0.003"]})],  # Adam at SGD's lr 0.1 blows it up
    ("finetune", "--beta1"): [v(0.5, ctx={**ADAM_CTX, "--lr": ["0.003"]}), v(0.5, expect=REFUSED)],
    ("finetune", "--beta2"): [v(0.9, ctx={**ADAM_CTX, "--lr": ["0.003"]}), v(0.9, expect=REFUSED)],
    ("finetune", "--init"): [v("glorot", ctx={"--new-head": []}), v("he", expect=REFUSED)],  # only a new head is drawn
    ("finetune", "--classes"): [v(3, 5, expect=REFUSED), v(3, 5, ctx={"--new-head": []})],
    ("resume", "--resume"): [v("@CK2")],
    ("resume", "--epochs"): [v(3)],
    ("resume", "--plot-dir"): [v("plots")],
    ("resume", "--arch"): [v("cnn")],
    ("resume", "--new-head"): [v()],
    ("resume", "--classes"): [v(3, 5)],
    ("resume", "--no-divergence-check"): [v()],
    ("resume", "--save-every"): [v(1, ctx=SAVE_CTX)],
    ("ensemble", "--grad"): [v("manual")],  # no --activation here: the probe sees the hand-derived rule traced
}
for _mode in ("ensemble", "notebook-exact", "resume"):  # the context-dependent train cells, once each
    for _flag in ("--momentum", "--beta1", "--beta2", "--warmup-epochs", "--patience", "--val-split", "--l2",
                  "--matmul-precision", "--input-dropout"):
        MODE_VALUES.setdefault((_mode, _flag), [TRAIN_VALUES[_flag][0]])
for _mode in ("notebook-exact", "ensemble", "resume"):
    MODE_VALUES.setdefault((_mode, "--batch-size"), [v(1), v(128)])

SWEEP_VALUES = {
    "--data-dir": [v("@OTHER")], "--dataset": [v("fashion-mnist")],
    "--lr": [v(0.3), v(0.1, 200, ctx=ONE_SEED)],  # a member that diverges is reported, the other goes on
    "--hidden": [v(8, 8, 8)], "--batch-size": [v(1), v(128)], "--seed": [v(1, 2)], "--init": [v("notebook")],
    "--random": [v(3)], "--search-seed": [v(1)],
    "--epochs": [v(2)], "--optimizer": [v("adam")],
    "--momentum": [v(0.5, ctx=OPT_CTX), v(0.5, expect=REFUSED)],
    "--beta1": [v(0.5, ctx=ADAM_CTX), v(0.5, expect=REFUSED)],
    "--beta2": [v(0.9, ctx=ADAM_CTX), v(0.9, expect=REFUSED)],
    "--weight-decay": [v(0.5)], "--l2": [v(0.5)], "--schedule": [v("warmup-cosine", ctx=THREE_EPOCHS)],
    "--warmup-epochs": [v(1, ctx={"--schedule": ["warmup-cosine"], "--epochs": ["3"]}), v(1, expect=REFUSED)],
    "--dropout": [v(0.5)], "--input-dropout": [v(0.5)], "--augment": [v("shift")],
    "--dtype": [v("float64"), v("bfloat16")],
    "--matmul-precision": [v("highest")],
    "--activation": [v("tanh")],
    "--arch": [v("cnn", expect=REFUSED)],  # with --hidden: the CNN's layers are fixed (a CNN sweep compiles ~10 s)
    "--devices": [v(2, expect=REFUSED)],  # one device in this process: test_sharded runs 4
    "--coordinator": [v("127.0.0.1:1", expect=REFUSED)], "--num-processes": [v(1, expect=REFUSED)],
    "--process-id": [v(0, expect=REFUSED)],
    "--max-group": [v(1)], "--shared-order": [v()], "--metrics-out": [v("other.json")], "--top": [v(1)],
    "--plot-dir": [v("plots")], "--quiet": [v()],
    "--chunk-steps": [v(2)],  # the same results (test_sweep_resume) in other calls: 1 an epoch, not 2 of 1 step
    "--save": [v("sweep.npz")],
    "--resume": [v("@SWEEP")],  # the base sweep, saved finished: its table again, nothing trained
}
SWEEP_MODE_VALUES = {("sweep-grid", "--random"): [v(2)], ("sweep-random", "--random"): [v(1)],
                     ("sweep-random", "--search-seed"): [v(2)],
                     ("sweep-random", "--resume"): [v("@SWEEP", expect=REFUSED)],  # the flags give another sweep
                     # search seed 1 draws the range's 51st and 95th percentiles (log scale): lr 0.17 and 96
                     ("sweep-random", "--lr"): [v(0.3), v(0.0001, 200, ctx=ONE_SEED)]}

VALUES = {
    "train": TRAIN_VALUES,
    "sweep": SWEEP_VALUES,
    "eval": {"--load": [v("@CK2")], "--data-dir": [v("@OTHER")], "--dataset": [v("fashion-mnist")],
             "--metrics-out": [v("other.json")], "--quiet": [v()]},
    "predict": {"--load": [v("@CK2")], "--top": [v(3)], "--format": [v("csv"), v("json")],
                "--json": [v(), v(ctx={"--format": ["csv"]}, expect=REFUSED)]},
    "bench": {"--data-dir": [v("@OTHER")], "--dataset": [v("fashion-mnist")], "--synthetic": [v()],
              "--train-size": [v(32), v(1000, expect=REFUSED)], "--hidden": [v(8, 8)],
              "--batch-size": [v(16), v(128, expect=REFUSED)], "--lr": [v(0.2)],
              "--large-batch": [v(16), v(128, expect=REFUSED)], "--sweep-size": [v(2)], "--numpy-steps": [v(2)],
              "--loop-steps": [v(2)], "--repeats": [v(2)], "--peak-size": [v(16)], "--json": [v()],
              "--metrics-out": [v("other.json")], "--out": [v("out.json", drop=["--metrics-out"]),
                                                           v("out.json", expect=REFUSED)],
              "--markdown": [v("bench.md")]},
    "gradcheck": {"--data-dir": [v("@OTHER")], "--dataset": [v("fashion-mnist")], "--hidden": [v(8, 8, 8)],
                  "--batch-size": [v(1), v(128)], "--init": [v("glorot")], "--activation": [v("tanh")],
                  "--l2": [v(0.1)], "--seed": [v(1)], "--coords": [v(3)], "--eps": [v(1e-3)], "--synthetic": [v()]},
    "reproduce": {"--list": [v()], "--rows": [v("lr0.001")], "--out": [v("repro")], "--data-dir": [v("@OTHER")],
                  "--quiet": [v()]},
    "verify": {"--data-dir": [v("@OTHER", expect=REFUSED)], "--quiet": [v()]},  # other data: refused, so it is read
    "download": {"--data-dir": [v("elsewhere")], "--dataset": [v("fashion-mnist")], "--mirror": [v("@MIRROR2")],
                 "--timeout": [v(5)], "--quiet": [v()]},
}

# The single runs of the edge combinations, each with its expectation.
EDGES = [
    ("predict", "one image (28, 28)", {"@IMAGES": "@ONE"}, CHANGES),
    ("predict", "an empty array", {"@IMAGES": "@EMPTY"}, REFUSED),
]


# ---------------------------------------------------------------- cells


class Cell(NamedTuple):
    mode: str
    option: str
    value: V

    @property
    def id(self) -> str:
        extra = "".join(f" {k} {' '.join(vs)}" for k, vs in self.value.ctx.items())
        drop = "".join(f" -{d}" for d in self.value.drop)
        return f"{self.mode}:{self.option} {' '.join(self.value.values)}{extra}{drop}".strip()

    def expectation(self) -> str:
        expect = self.value.expect
        if isinstance(expect, dict):
            expect = expect.get(self.mode)
        if expect is not None:
            return expect
        return CHANGES if self.option in MODES[self.mode].accepts else REFUSED


def values_of(mode: str, option: str) -> list[V] | None:
    command = MODES[mode].command
    if (mode, option) in MODE_VALUES:
        return MODE_VALUES[(mode, option)]
    if (mode, option) in SWEEP_MODE_VALUES:
        return SWEEP_MODE_VALUES[(mode, option)]
    return VALUES.get(command, {}).get(option)


def all_cells(modes=None) -> list[Cell]:
    """Every cell of ``modes`` (default: all modes)."""
    cells = []
    for mode, spec in MODES.items():
        if modes is not None and mode not in modes:
            continue
        for option in _options(spec.command):
            for value in values_of(mode, option) or []:
                cells.append(Cell(mode, option, value))
    return cells




def _subcommands() -> list[str]:
    parser = build_parser()
    return list(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


# ---------------------------------------------------------------- the world the cells run in


def _digits(rng, n: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    labels = ((np.arange(n) + shift) % 10).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + shift: 2 * c + shift + 6, 4:24] = 255
    return images, labels


def _dataset(folder: Path, seed: int, shift: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images, labels = _digits(rng, n, shift)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def call(argv, cwd: Path) -> tuple[int, str, str]:
    """``main(argv)`` in-process in folder ``cwd``: (exit code, stdout, stderr); argparse's own exits too."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                rc = main([str(a) for a in argv])
            except SystemExit as stop:
                rc = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(here)
    return rc, out.getvalue(), err.getvalue()


class World:
    """The data, checkpoints and files the cells name with ``@WORDS``, and the runs made so far."""

    def __init__(self, root: Path):
        self.root = root
        data = root / "data"
        _dataset(data / "mnist", 0)
        _dataset(data / "fashion-mnist", 1, shift=1)
        _dataset(root / "other", 2, shift=2)
        self.subst = {"@OTHER": str(root / "other"), "@MIRROR2": (root / "mirror2").as_uri()}
        self.runs: dict = {}
        self.counter = 0

    def setup(self) -> None:
        for name, seed in (("@CK", 42), ("@CK2", 7)):
            path = self.root / f"{name[1:].lower()}.npz"
            rc, _, err = call(["train", "--hidden", 8, "--epochs", 1, "--batch-size", 32, "--seed", seed, "--save",
                               path, "--quiet"], self.root)
            assert rc == 0, err
            self.subst[name] = str(path)
        sweep = self.argv("sweep-grid", {k: x for k, x in MODES["sweep-grid"].base.items() if k != "--metrics-out"}, ())
        rc, _, err = call([*sweep, "--save", self.root / "sweep.npz", "--quiet"], self.root)
        assert rc == 0, err
        self.subst["@SWEEP"] = str(self.root / "sweep.npz")
        ensemble = self.argv("ensemble", {k: x for k, x in MODES["ensemble"].base.items() if k != "--metrics-out"}, ())
        rc, _, err = call([*ensemble, "--save", self.root / "ens.npz", "--quiet"], self.root)
        assert rc == 0, err
        self.subst["@ENS"] = str(self.root / "ens.npz")
        rc, _, err = call(["train", "--hidden", 8, "--epochs", 1, "--batch-size", 32, "--manifest",
                           self.root / "manifest.json", "--quiet"], self.root)
        assert rc == 0, err
        self.subst["@MANIFEST"] = str(self.root / "manifest.json")
        images = _digits(np.random.default_rng(5), 4, 0)[0]
        for name, array in (("@IMAGES", images), ("@ONE", images[0]), ("@EMPTY", images[:0])):
            np.save(self.root / f"{name[1:].lower()}.npy", array)
            self.subst[name] = str(self.root / f"{name[1:].lower()}.npy")
        for mirror, folder in (("mirror", "mnist"), ("mirror2", "mnist")):
            (self.root / mirror).mkdir()
            for f in (self.root / "data" / folder).iterdir():
                (self.root / mirror / f.name).write_bytes(f.read_bytes())
        (self.root / "mirror-fashion").mkdir()
        for f in (self.root / "data" / "fashion-mnist").iterdir():
            (self.root / "mirror-fashion" / f.name).write_bytes(f.read_bytes())

    def argv(self, mode: str, options: dict, positional: tuple) -> list[str]:
        spec = MODES[mode]
        out = [spec.command, *(self.subst.get(p, p) for p in positional)]
        for option, values in options.items():
            out += [option, *(self.subst.get(x, x) for x in values)]
        return out

    def run(self, mode: str, options: dict, positional: tuple = ()) -> dict:
        """The observed outcome of one run (cached by its command line)."""
        positional = positional or MODES[mode].positional
        argv = self.argv(mode, options, positional)
        key = tuple(argv)
        if key not in self.runs:
            self.counter += 1
            cwd = self.root / "runs" / str(self.counter)
            cwd.mkdir(parents=True)
            with observe(mode) as seen:
                rc, out, err = call(argv, cwd)
            self.runs[key] = {"rc": rc, "stdout": out, "stderr": err, "argv": argv, **outputs(cwd), **seen}
        return self.runs[key]


# ---------------------------------------------------------------- what a run produces


ECHO = {"config", "notebook_exact", "ensemble", "shared_order", "dataset", "checkpoint", "time", "jax_version",
        "peak_rss_mb", "backend", "process_index", "process_count", "local_devices"}


def _normal(obj):
    """A JSON value without timings and without the echo of the settings."""
    if isinstance(obj, dict):
        return {k: _normal(x) for k, x in obj.items() if k not in ECHO and not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_normal(x) for x in obj]
    return obj


def _digest_npz(path: Path) -> str:
    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as z:
        for name in sorted(z.files):
            if name != "meta":
                h.update(name.encode() + np.ascontiguousarray(z[name]).tobytes())
    return h.hexdigest()


def outputs(cwd: Path) -> dict:
    files: dict = {}
    for path in sorted(p for p in cwd.rglob("*") if p.is_file()):
        rel = str(path.relative_to(cwd))
        if path.suffix == ".npz":
            files[rel] = _digest_npz(path)
        elif path.suffix in (".json", ".jsonl"):
            files[rel] = [_normal(json.loads(line)) for line in path.read_text().splitlines()] if \
                path.suffix == ".jsonl" else _normal(json.loads(path.read_text()))
        elif path.suffix == ".png" or rel.endswith(".md"):
            files[rel] = "written"
        else:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"files": files}


def _params_digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


class observe:
    """Patches that record what a run did beyond its outputs (restored on exit)."""

    def __init__(self, mode: str):
        self.mode, self.seen = mode, {}

    def __enter__(self) -> dict:
        from _pytest.monkeypatch import MonkeyPatch

        import jaxmlp.backprop
        import jaxmlp.bench
        import jaxmlp.data
        import jaxmlp.engine
        import jaxmlp.groups
        import jaxmlp.handlers
        import jaxmlp.members
        import jaxmlp.notebook
        import jaxmlp.runs
        import jaxmlp.sweep

        self.mp, seen = MonkeyPatch(), self.seen
        seen.update(chunks=0, saves=0, rules=[], precision=set(), params=[], progress=[], urls=[], traced=[])

        def wrap(module, name, before=None, after=None):
            original = getattr(module, name)

            def wrapper(*args, **kwargs):
                if before:
                    before(*args, **kwargs)
                result = original(*args, **kwargs)
                if after:
                    after(result)
                return result
            self.mp.setattr(module, name, wrapper)

        def count(key):
            return lambda *a, **k: seen.__setitem__(key, seen[key] + 1)

        wrap(jaxmlp.engine.Loop, "advance", before=count("chunks"))
        wrap(jaxmlp.groups._Loop, "chunk", before=count("chunks"))
        wrap(jaxmlp.runs, "_save", before=count("saves"))
        wrap(jaxmlp.backprop, "manual_grad", before=lambda *a, **k: seen["traced"].append("manual_grad"))
        wrap(jaxmlp.handlers, "default_checks", before=lambda divergence=True: seen["rules"].append(divergence))
        wrap(jaxmlp.members, "diverged_members", before=lambda *a, **k: seen["rules"].append(a[3] if len(a) > 3 else
                                                                                          k.get("rule", True)))
        wrap(jaxmlp.notebook, "_check_divergence", before=lambda *a: seen["rules"].append(a[3]))
        wrap(jaxmlp.engine, "compile_program", before=lambda *a, **k: seen["precision"].add(
            str(jax.config.jax_default_matmul_precision)))
        keep = lambda r: seen["params"].append(_params_digest(r.params))  # noqa: E731
        for module, name in ((jaxmlp.runs, "fit"), (jaxmlp.sweep, "fit_ensemble"), (jaxmlp.notebook, "fit_notebook")):
            wrap(module, name, after=keep)
        wrap(jaxmlp.sweep, "run_sweep",
             after=lambda r: seen["params"].append([(x.history, x.test_loss) for x in r.runs]))
        wrap(jaxmlp.data, "ensure_dataset", before=lambda *a, **k: seen["progress"].append(k.get("progress")))
        wrap(jaxmlp.data, "download", before=lambda *a, **k: seen["progress"].append(k.get("progress")))
        import urllib.request
        wrap(urllib.request, "urlopen", before=lambda req, **k: seen["urls"].append((req.full_url, k.get("timeout"))))
        if self.mode == "bench":  # the rows' arguments are the report (see the module docstring)
            def fake_bench(images, labels, **kwargs):
                kwargs.pop("on_row", None)
                return {"images": hashlib.sha256(np.asarray(images).tobytes()).hexdigest(), "n": len(labels),
                        **{k: list(x) if isinstance(x, tuple) else x for k, x in kwargs.items()}}
            self.mp.setattr(jaxmlp.bench, "run_bench", fake_bench)
            self.mp.setattr(jaxmlp.bench, "format_report", lambda r: "report " + json.dumps(r, sort_keys=True))
            self.mp.setattr(jaxmlp.bench, "format_markdown", lambda r: "| report |")
        return seen

    def __exit__(self, *exc) -> None:
        self.seen["precision"] = sorted(self.seen["precision"])
        self.mp.undo()


def _registry_patch(mp, root: Path) -> None:
    """Make the registry expect the synthetic files (served from ``file://`` mirrors)."""
    from jaxmlp.data import registry

    for name, folder, mirror in (("mnist", "mnist", "mirror"), ("fashion-mnist", "fashion-mnist", "mirror-fashion")):
        info = registry.DATASETS[name]
        files = tuple(f._replace(content_sha256=hashlib.sha256(gzip.decompress(
            (root / "data" / folder / f.name).read_bytes())).hexdigest(), gzip_sha256=None) for f in info.files)
        mp.setitem(registry.DATASETS, name, info._replace(files=files, mirrors=((root / mirror).as_uri(),)))


def make_world(tmp_path_factory):
    """The world of the cells (a generator for a module fixture): data, checkpoints, patches."""
    from _pytest.monkeypatch import MonkeyPatch

    mp = MonkeyPatch()
    root = tmp_path_factory.mktemp("matrix")
    w = World(root)
    mp.setenv("JAXMLP_DATA_DIR", str(root / "data"))
    _registry_patch(mp, root)
    import jaxmlp.members  # one chain per group program: half the compile time, the same math (test_sweep)
    mp.setattr(jaxmlp.members, "default_chains", lambda num_models, devices=1: 1)
    w.setup()
    yield w
    mp.undo()


# ---------------------------------------------------------------- the cells


def _compared(run: dict) -> dict:
    seen = {k: run[k] for k in ("chunks", "saves", "rules", "precision", "params", "progress", "urls", "files",
                                "traced")}
    return {"rc": run["rc"], "stdout": run["stdout"], "stderr": re.sub(r"\d", "#", run["stderr"]), **seen}


def _options_for(cell: Cell, with_flag: bool) -> dict:
    base = dict(MODES[cell.mode].base)
    for option in cell.value.drop:
        base.pop(option, None)
    if not cell.value.values and cell.option in base:  # a switch of the mode's base: compare without it
        base.pop(cell.option)
    base.update(cell.value.ctx)
    if with_flag:
        base[cell.option] = list(cell.value.values)
    return base


def assert_one_line_error(run: dict) -> None:
    err = run["stderr"]
    assert run["rc"] not in (0, None), f"exit 0: {run['argv']}\n{run['stdout']}{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxmlp"), f"{run['argv']}: not one line:\n{err}"


