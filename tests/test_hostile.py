"""Hostile input through the command line, table-driven: bombs, malformed checkpoint members, absurd
sizes, unwritable outputs. Each case must end with the expected exit code, exactly one stderr line and
no traceback, and leave no file behind in its output folder. The cases about memory (the bombs that
inflate to 1 GiB, endless files, a model larger than the machine) run ``jaxmlp`` as a real process and
keep its peak RSS under 900 MB; the others run ``cli.main`` in this process, which is faster."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_cli import SMALL, write_dataset
from test_fuzz_idx import gzip_bomb

pytestmark = pytest.mark.slow
RSS_LIMIT_MB = 900
# The child's own peak (VmHWM, KiB). Not getrusage's ru_maxrss: Linux carries the forking parent's peak
# (pytest's, which grows over a session) into the child's ru_maxrss across exec.
CHILD = ("import os, sys\n"
         "from jaxmlp.cli import main\n"
         "rc = main(sys.argv[1:])\n"
         "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]\n"
         "open(os.environ['RSS_OUT'], 'w').write(hwm)\n"
         "sys.exit(rc)\n")


def in_process(tmp_path: Path, *argv) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, nan, seconds) of ``cli.main(ARGV)`` in this process."""
    from test_cli import run

    t0 = time.monotonic()
    rc, out, err = run(*argv)
    return rc, out, err, float("nan"), time.monotonic() - t0


def jaxmlp(tmp_path: Path, *argv, timeout: float = 120) -> tuple[int, str, str, float, float]:
    """(exit code, stdout, stderr, peak RSS in MB, seconds) of ``jaxmlp ARGV`` in a child process."""
    rss = tmp_path / "rss.txt"
    env = {**os.environ, "RSS_OUT": str(rss), "JAXMLP_COMPILE_CACHE": "0", "XDG_CACHE_HOME": str(tmp_path / "c")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    seconds = time.monotonic() - t0
    peak = int(rss.read_text()) / 1024 if rss.exists() else float("nan")
    rss.unlink(missing_ok=True)
    return proc.returncode, proc.stdout, proc.stderr, peak, seconds


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small dataset folder and a 1-epoch checkpoint to damage."""
    root = tmp_path_factory.mktemp("hostile")
    data = write_dataset(root / "data")
    ckpt = root / "good.npz"
    from jaxmlp.cli import main

    assert main(["train", "--data-dir", str(data), *SMALL, "--epochs", "1", "--save", str(ckpt), "--quiet"]) == 0
    return {"data": data, "ckpt": ckpt, "root": root}


def _members(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def _rewrite(path: Path, out: Path, change) -> Path:
    members = _members(path)
    change(members)
    np.savez(out, **members)
    return out


def _meta_change(edit):
    def change(members):
        meta = json.loads(bytes(members["meta"]).decode())
        edit(meta)
        members["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return change


def _set(name, value):
    def change(members):
        members[name] = value(members[name])
    return change


def _zip_bomb(path: Path, out: Path) -> Path:
    """The checkpoint with its first weight member replaced by one that inflates to 1 GiB (~1 MB file).
    Deflating the GiB takes seconds, so each checkpoint's bomb is built once and copied."""
    if path not in _BOMBS:
        _BOMBS[path] = _build_zip_bomb(path, out).read_bytes()
    out.write_bytes(_BOMBS[path])
    return out


_BOMBS: dict = {}


def _build_zip_bomb(path: Path, out: Path) -> Path:
    members = _members(path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 28,)})
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, array in members.items():
            if name != "state/params/0/W":
                buf = io.BytesIO()
                np.save(buf, array)
                z.writestr(name + ".npy", buf.getvalue())
        with z.open("state/params/0/W.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(1 << 10):
                f.write(zeros)
    return out


# (what, how to build the bad input, argv with {data} {ckpt} {bad} {out}, expected text in the error line)
CHECKPOINT_CASES = {
    "zip-bomb-eval": (_zip_bomb, ["eval", "--load", "{bad}", "--data-dir", "{data}"], "state/params/0/W"),
    "zip-bomb-resume": (_zip_bomb, ["train", "--data-dir", "{data}", "--resume", "{bad}", "--epochs", "3",
                                    "--save", "{out}/x.npz"], "state/params/0/W"),
    "zip-bomb-finetune": (_zip_bomb, ["train", "--data-dir", "{data}", "--finetune", "{bad}", "--save", "{out}/x.npz"],
                          "state/params/0/W"),
    "int8-weights": (_set("state/params/0/W", lambda w: w.astype(np.int8)), ["eval", "--load", "{bad}", "--data-dir",
                                                                              "{data}"], "state/params/0/W"),
    "bool-weights": (_set("state/params/0/W", lambda w: w > 0), ["eval", "--load", "{bad}", "--data-dir", "{data}"],
                     "state/params/0/W"),
    "float16-weights": (_set("state/params/1/W", lambda w: w.astype(np.float16)),
                        ["predict", "--load", "{bad}", "{data}/t10k-images-idx3-ubyte.gz"], "state/params/1/W"),
    "complex-weights": (_set("state/params/0/b", lambda b: b.astype(np.complex64)),
                        ["eval", "--load", "{bad}", "--data-dir", "{data}"], "state/params/0/b"),
    "3d-weights": (_set("state/params/0/W", lambda w: w[None]), ["eval", "--load", "{bad}", "--data-dir", "{data}"],
                   "state/params/0/W"),
    "transposed-weights": (_set("state/params/0/W", lambda w: np.ascontiguousarray(w.T)),
                           ["eval", "--load", "{bad}", "--data-dir", "{data}"], "state/params/0/W"),
    "key-wrong-shape": (_set("state/key", lambda k: np.concatenate([k, k])),
                        ["train", "--data-dir", "{data}", "--resume", "{bad}", "--epochs", "3"], "state/key"),
    "negative-epoch": (_set("state/epoch", lambda e: np.array(-3, e.dtype)),
                       ["train", "--data-dir", "{data}", "--resume", "{bad}", "--epochs", "3"], "epoch"),
    "config-hidden-1e9": (_meta_change(lambda m: m["config"].update(hidden=[10 ** 9])),
                          ["eval", "--load", "{bad}", "--data-dir", "{data}"], "state/params/0/W"),
    "config-bad-init": (_meta_change(lambda m: m["config"].update(init="zeros")),
                        ["eval", "--load", "{bad}", "--data-dir", "{data}"], "init"),
    "config-unknown-dtype": (_meta_change(lambda m: m["config"].update(dtype="float8")),
                             ["eval", "--load", "{bad}", "--data-dir", "{data}"], "dtype"),
    "config-negative-seed": (_meta_change(lambda m: m["config"].update(seed=-1)),
                             ["train", "--data-dir", "{data}", "--resume", "{bad}", "--epochs", "3"], "seed"),
    "meta-deep-nesting": (_set("meta", lambda m: np.frombuffer(bytes(m)[:-1] + b', "deep": ' + b"[" * 100000
                                                      + b"]" * 100000 + b"}", np.uint8)),
                          ["eval", "--load", "{bad}", "--data-dir", "{data}"], "meta"),
}


@pytest.mark.parametrize("make,argv,expect", CHECKPOINT_CASES.values(), ids=CHECKPOINT_CASES.keys())
def test_hostile_checkpoints(tmp_path, world, make, argv, expect):
    """A damaged checkpoint in eval, predict, --resume or --finetune: exit 1, one line naming the file
    and what is wrong, nothing written, bounded memory."""
    if make is _zip_bomb:
        bad = _zip_bomb(world["ckpt"], tmp_path / "bad.npz")
    else:
        bad = _rewrite(world["ckpt"], tmp_path / "bad.npz", make)
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(data=world["data"], ckpt=world["ckpt"], bad=bad, out=out) for a in argv]
    bomb = make is _zip_bomb
    rc, stdout, err, peak, _ = (jaxmlp if bomb else in_process)(tmp_path, *args)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "bad.npz" in lines[0] and expect in lines[0], lines[0]
    assert stdout == "" and list(out.iterdir()) == []
    assert not bomb or peak < RSS_LIMIT_MB, f"peak RSS {peak:.0f} MB"


def _bomb_data(tmp_path: Path, world) -> Path:
    folder = tmp_path / "bombdata"
    folder.mkdir()
    for f in world["data"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    gzip_bomb(folder / "train-images-idx3-ubyte.gz", declared=(512, 28, 28))
    return folder


OTHER_CASES = {
    "idx-bomb-train": (lambda t, w: ["train", "--data-dir", _bomb_data(t, w), "--save", t / "out" / "x.npz"],
                       1, "unexpected bytes"),
    "idx-bomb-predict": (lambda t, w: ["predict", "--load", w["ckpt"], _bomb_data(t, w) / "train-images-idx3-ubyte.gz"],
                         1, "unexpected bytes"),
    "predict-dev-zero": (lambda t, w: ["predict", "--load", w["ckpt"], "/dev/zero"], 1, "/dev/zero"),
    "model-larger-than-the-machine": (lambda t, w: ["train", "--data-dir", w["data"], "--hidden", 100000, 100000,
                                                    "--save", t / "out" / "x.npz"], 1, "available"),
    "metrics-out-is-a-folder": (lambda t, w: ["train", "--data-dir", w["data"], *SMALL, "--metrics-out", t / "out"],
                                1, "--metrics-out"),
    "save-under-a-file": (lambda t, w: ["train", "--data-dir", w["data"], *SMALL, "--save",
                                        w["ckpt"] / "x.npz"], 1, "--save"),
    "plot-dir-is-a-file": (lambda t, w: ["train", "--data-dir", w["data"], *SMALL, "--plot-dir", w["ckpt"]],
                           1, "--plot-dir"),
    "log-under-a-file": (lambda t, w: ["train", "--data-dir", w["data"], *SMALL, "--log", w["ckpt"] / "l.jsonl"],
                         1, "--log"),
    "sweep-metrics-folder": (lambda t, w: ["sweep", "--data-dir", w["data"], "--hidden", 8, "--metrics-out", t / "out"],
                             1, "--metrics-out"),
    "bench-out-under-a-file": (lambda t, w: ["bench", "--synthetic", "--train-size", 256, "--metrics-out",
                                             w["ckpt"] / "b.json"], 1, "--metrics-out"),
}


@pytest.mark.parametrize("make,code,expect", OTHER_CASES.values(), ids=OTHER_CASES.keys())
def test_hostile_files_sizes_and_outputs(tmp_path, world, make, code, expect):
    """IDX bombs, endless files, a model that cannot fit, outputs that cannot be written: refused within
    seconds, before any training (nothing on stdout), one line, nothing left behind."""
    (tmp_path / "out").mkdir()
    memory = expect in ("unexpected bytes", "/dev/zero", "available")
    rc, stdout, err, peak, seconds = (jaxmlp if memory else in_process)(tmp_path, *make(tmp_path, world))
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0] and stdout == "", lines[0]
    assert list((tmp_path / "out").iterdir()) == []
    assert seconds < 60 and (not memory or peak < RSS_LIMIT_MB), (peak, seconds)


def test_a_finite_blow_up_is_divergence_and_keeps_the_checkpoint(tmp_path, world):
    """--lr 1e4: whatever form the blow-up takes (a loss far above its start, or NaN), one line, exit 1,
    the earlier checkpoint untouched."""
    keep = tmp_path / "keep.npz"
    keep.write_bytes(world["ckpt"].read_bytes())
    before = keep.read_bytes()
    rc, _, err, _, _ = in_process(tmp_path, "train", "--data-dir", world["data"], *SMALL, "--epochs", 3, "--lr",
                                  "1e4", "--save", keep, "--quiet")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and ("diverged" in err or "non-finite" in err), err
    assert keep.read_bytes() == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("argv,flag", [
    (["train", "--save", "/proc/nope/x.npz"], "--save"),
    (["train", "--metrics-out", "/proc/nope/m.json"], "--metrics-out"),
    (["reproduce", "seed", "--out", "/proc/nope/x"], "--out"),
    (["bench", "--synthetic", "--markdown", "/proc/nope/b.md"], "--markdown"),
], ids=["train-save", "train-metrics-out", "reproduce-out", "bench-markdown"])
def test_an_output_where_no_file_can_be_created_is_refused_before_any_work(tmp_path, argv, flag):
    """/proc's permission bits let root write (os.access says yes) but no file can be created there: the
    pre-flight check creates and removes a real file, so the run is refused at once, one line naming the
    flag, instead of failing after its first epoch."""
    rc, out, err, _, seconds = in_process(tmp_path, *argv, "--data-dir", tmp_path)  # no data: checked after
    lines = err.strip().splitlines()
    assert rc == 1 and out == "" and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"jaxmlp: error: {flag}: ") and "/proc" in lines[0], lines[0]
    assert seconds < 30


def test_the_write_check_leaves_nothing_behind(tmp_path):
    """check_writable's trial file is removed again, in an existing folder and in the nearest existing
    ancestor of a folder still to be made."""
    from jaxmlp.fileio import check_writable

    check_writable(tmp_path / "run.npz", "--save")
    check_writable(tmp_path / "a" / "b" / "run.npz", "--save")
    check_writable(tmp_path / "plots", "--plot-dir", folder=True)
    assert list(tmp_path.iterdir()) == []


def test_max_relative_error_is_inf_for_a_nan_or_an_infinity():
    """A NaN or infinite gradient never agrees: Python's max used to drop the NaN and report 0.0. Only the
    compared entries count: a NaN outside the mask is ignored."""
    import jax.numpy as jnp

    from jaxmlp.backprop import max_relative_error

    assert max_relative_error(jnp.array([np.nan, 1.0]), jnp.array([1.0, 1.0])) == np.inf
    assert max_relative_error(jnp.array([1.0, 1.0]), jnp.array([1.0, np.nan])) == np.inf
    assert max_relative_error(jnp.array([np.inf, 1.0]), jnp.array([np.inf, 1.0])) == np.inf
    assert max_relative_error(jnp.array([np.nan]), jnp.array([np.nan])) == np.inf
    assert max_relative_error(np.array([-np.inf, 2.0]), np.array([1.0, 2.0])) == np.inf
    tree = [{"W": jnp.ones((2, 2)), "b": jnp.array([0.0, np.nan])}]
    assert max_relative_error(tree, [{"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}]) == np.inf
    mask = np.array([False, True])
    assert max_relative_error(jnp.array([np.nan, 2.0]), jnp.array([1.0, 2.0]), mask) == 0.0
    assert max_relative_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.2])) == pytest.approx(0.2 / 2.2)
