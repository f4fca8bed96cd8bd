#!/usr/bin/env bash
# The GPU check: the test suite on the device and the measurements of issue 20, in one run.
#
#   OUT=/tmp/gpu-check JAXMLP_DATA_DIR=$PWD/data/mnist bash scripts/gpu_check.sh
#
# Run from anywhere on a machine with JAX for CUDA; the project need not be installed (it runs as
# PYTHONPATH=<repo> python3 -m jaxmlp). Every step has its own timeout and the whole script a budget
# (GPU_CHECK_BUDGET seconds, default 600): a step gets at most what is left, and the steps come
# most-wanted first (the machine, the sweep, fast-97, plain runs, the bench, issue 21's seed table
# against one of its rows, the quick tests, the slow tests named in issue 20, the other slow tests).
# Everything goes under $OUT: one log per step (its stdout and stderr), summary.txt (a line per step:
# exit status and wall time, then the numbers) and summary.json (the numbers, read from the steps' JSON
# files), the tests' JUnit XML.
#
# GPU_CHECK_DRY=1 shrinks every step (a 4-model sweep, a short synthetic bench, two tests) to try the
# script's logic on a CPU in a minute or two. PYTHON picks the interpreter (default python3).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/scripts/$(basename "${BASH_SOURCE[0]}")"
OUT=${OUT:-/tmp/gpu-check}
PYTHON=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-600}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
JAXMLP=("$PYTHON" -m jaxmlp)
TIMEV=()
[ -x /usr/bin/time ] && TIMEV=(/usr/bin/time -v)  # adds the peak RSS to the log

# ---------------------------------------------------------------- sizes (the dry run shrinks them)
if [ "$DRY" = 1 ]; then
    NUM_LRS=2 SEEDS="0 1"
    SWEEP_EXTRA=(--hidden 16 --epochs 1)
    FAST_EXTRA=(--epochs 1 --hidden 16)
    TRAIN_EXTRA=(--epochs 1 --hidden 16)
    BENCH_ARGS=(--synthetic --train-size 2000 --repeats 1 --numpy-steps 20 --loop-steps 20 --sweep-size 2
                --peak-size 256)
    QUICK_TESTS=(tests/test_backend.py::test_the_policy_in_numbers)
    NAMED_SLOW=(tests/test_backend.py::test_the_cnn_follows_the_switch)
    OTHER_SLOW=(tests/test_backend.py)
    WORKERS=0 PROBE_SIZE=256
else
    NUM_LRS=40 SEEDS=$(seq -s ' ' 0 24)
    SWEEP_EXTRA=(--epochs 2)
    FAST_EXTRA=()
    TRAIN_EXTRA=(--epochs 2)
    BENCH_ARGS=(--repeats 3)
    QUICK_TESTS=(tests)
    # The three slow tests issue 20 found failing on the GPU, then the sweep's and the backend's.
    NAMED_SLOW=(tests/test_cli.py::test_the_compile_cache_is_switched_on_at_the_cli_entry
                tests/test_backend.py::test_the_cnn_follows_the_switch
                tests/test_model.py::test_forward_shapes_any_depth
                tests/test_sweep.py tests/test_backend.py)
    OTHER_SLOW=(tests --ignore=tests/test_sweep.py --ignore=tests/test_backend.py
                --deselect tests/test_cli.py::test_the_compile_cache_is_switched_on_at_the_cli_entry
                --deselect tests/test_model.py::test_forward_shapes_any_depth)
    WORKERS=8 PROBE_SIZE=4096
fi

# ---------------------------------------------------------------- what the steps run
machine() {
    date -u
    git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
    nvidia-smi -L || echo "nvidia-smi: not found"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
    nproc
    "$PYTHON" --version
    "$PYTHON" - "$PROBE_SIZE" <<'EOF'
import importlib, platform, sys, time
for name in ("jax", "jaxlib", "numpy", "pytest", "xdist", "hypothesis", "matplotlib", "nbformat", "nbclient"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'present')}")
    except ImportError:
        print(f"{name}: MISSING")
import jax, jax.numpy as jnp, numpy as np
print("backend:", jax.default_backend(), jax.devices(), platform.node())
# What each --matmul-precision means here: a float32 matmul's error against float64, and its speed.
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
exact = a.astype(np.float64) @ b.astype(np.float64)
x, y = jnp.asarray(a), jnp.asarray(b)
for setting in ("default", "high", "highest"):
    with jax.default_matmul_precision(setting):
        f = jax.jit(lambda u, v: u @ v)
        got = np.asarray(f(x, y))
        t0 = time.perf_counter()
        for _ in range(10):
            res = f(x, y)
        res.block_until_ready()
        seconds = (time.perf_counter() - t0) / 10
    err = np.abs(got - exact).max() / np.abs(exact).max()
    print(f"matmul {n}^2 float32 at {setting:8s}: max error {err:.2e} of the largest entry, "
          f"{2 * n ** 3 / seconds / 1e12:.2f} TFLOP/s")
EOF
}

# The sweep of issue 20: NUM_LRS log-spaced lrs in [1e-3, 1] x the seeds; TAG names its JSON.
sweep() {
    local tag=$1 lrs
    lrs=$("$PYTHON" -c "import numpy as np; print(' '.join(f'{v:.6g}' for v in np.logspace(-3, 0, $NUM_LRS)))")
    # shellcheck disable=SC2086  # lists of numbers
    JAXMLP_COMPILE_CACHE="$SCRATCH/cache-sweep" "${TIMEV[@]}" "${JAXMLP[@]}" sweep --lr $lrs --seed $SEEDS \
        "${SWEEP_EXTRA[@]}" --top 5 --metrics-out "$OUT/sweep_$tag.json"
}

# A `jaxmlp train` run with the compile cache CACHE (an empty one: cold; a used one: warm); TAG names its JSON.
train() {
    local tag=$1 cache=$2
    shift 2
    JAXMLP_COMPILE_CACHE="$SCRATCH/cache-$cache" "${TIMEV[@]}" "${JAXMLP[@]}" train --quiet \
        --metrics-out "$OUT/train_$tag.json" "$@"
}

# A sub-invocation: `bash gpu_check.sh --run CMD...` runs one step's command (timeout needs a program).
if [ "${1:-}" = "--run" ]; then
    shift
    "$@"
    exit $?
fi

# ---------------------------------------------------------------- the steps
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)  # absolute: the steps run from other folders
SCRATCH=$(mktemp -d /tmp/gpu-check-scratch.XXXXXX)
export OUT SCRATCH XDG_CACHE_HOME="$SCRATCH/xdg"  # nothing lands in the user's caches
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT CMD...: CMD's stdout and stderr in $OUT/NAME.log, killed (with its process group)
# after LIMIT seconds or when the budget runs out, whichever is first; a line in summary.txt.
step() {
    local name=$1 limit=$2 left t0 t1 rc
    shift 2
    left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 15)); then
        note "$(printf '%-24s skipped: the budget of %s s is spent' "$name" "$BUDGET")"
        return 0
    fi
    ((limit > left)) && limit=$left
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" bash "$SELF" --run "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >"$OUT/$name.seconds"
    note "$(printf '%-24s rc=%-4s wall %7.1f s (limit %s s)%s' "$name" "$rc" "$(cat "$OUT/$name.seconds")" \
        "$limit" "$(if ((rc == 124 || rc == 137)); then echo '  TIMED OUT'; fi)")"
}

step machine 90 machine
if [ "$DRY" != 1 ] && ! grep -q "^backend: gpu" "$OUT/machine.log"; then
    note "WARNING: JAX sees no GPU here (machine.log); every step runs on what it sees"
fi

# Measurements: the sweep cold (empty compile cache) and warm; fast-97 cold and warm; a plain run at
# the default precision and at "highest"; the bench (every row, with its JSON and, when offered, the
# results page's Markdown). The JSON's wall_seconds is run_sweep's; the step's wall, the process's.
step sweep_cold 150 sweep cold
step sweep_warm 90 sweep warm
step fast97_cold 60 train fast97_cold fast97 --preset fast-97 "${FAST_EXTRA[@]}"
step fast97_warm 45 train fast97_warm fast97 --preset fast-97 "${FAST_EXTRA[@]}"
step train_plain 60 train plain plain "${TRAIN_EXTRA[@]}"
step train_highest 60 train highest highest --matmul-precision highest "${TRAIN_EXTRA[@]}"
BENCH_MD=()
"${JAXMLP[@]}" bench --help 2>/dev/null | grep -q -- "--markdown" && BENCH_MD=(--markdown "$OUT/bench.md")
step bench 150 env JAXMLP_COMPILE_CACHE=0 "${JAXMLP[@]}" bench "${BENCH_ARGS[@]}" --metrics-out "$OUT/bench.json" \
    "${BENCH_MD[@]}"
# Issue 21 on the device: the seed table against one of its rows (float64; MNIST needed). The dry run
# only lists the table: the real rows are minutes on a CPU.
if [ "$DRY" = 1 ]; then
    step seed_list 30 "${JAXMLP[@]}" reproduce seed --list
else
    step seed_row 60 "${JAXMLP[@]}" reproduce seed --rows lr0.01 --out "$OUT/seed_row"
    step seed_table 90 "${JAXMLP[@]}" reproduce seed --out "$OUT/seed_table"
fi

# The tests on the device. Workers share it: no 75% preallocation each. Real-data tests must find
# MNIST when a data folder is given. addopts is cleared (it names xdist, which may be missing).
PYTEST=("$PYTHON" -m pytest -o addopts= -v -ra -p no:cacheprovider --durations=15)
if ((WORKERS > 0)) && "$PYTHON" -c "import xdist" 2>/dev/null; then
    PARALLEL=(-n "$WORKERS" --dist loadscope) SLOW_PARALLEL=(-n 4 --dist loadscope)
else
    PARALLEL=(-p no:xdist) SLOW_PARALLEL=(-p no:xdist)
    ((WORKERS > 0)) && note "pytest-xdist missing: the tests run in one process"
fi
IGNORE=()
if ! "$PYTHON" -c "import hypothesis" 2>/dev/null; then
    for f in $(grep -l -E "^(from|import) hypothesis" "$ROOT"/tests/*.py); do IGNORE+=("--ignore=$f"); done
    note "hypothesis missing: not collected: ${IGNORE[*]:-nothing}"
fi
TEST_ENV=(env XLA_PYTHON_CLIENT_PREALLOCATE=false)
[ -n "${JAXMLP_DATA_DIR:-}" ] && TEST_ENV+=(JAXMLP_REQUIRE_DATA=1)
cd "$ROOT" || exit 1
step tests_quick 240 "${TEST_ENV[@]}" "${PYTEST[@]}" "${PARALLEL[@]}" "${IGNORE[@]}" -m "not slow" \
    --junitxml="$OUT/tests_quick.xml" "${QUICK_TESTS[@]}"
step tests_slow_named 150 "${TEST_ENV[@]}" "${PYTEST[@]}" "${SLOW_PARALLEL[@]}" "${IGNORE[@]}" -m slow \
    --junitxml="$OUT/tests_slow_named.xml" "${NAMED_SLOW[@]}"
step tests_slow_other 300 "${TEST_ENV[@]}" "${PYTEST[@]}" "${PARALLEL[@]}" "${IGNORE[@]}" -m slow \
    --junitxml="$OUT/tests_slow_other.xml" "${OTHER_SLOW[@]}"

# ---------------------------------------------------------------- the numbers, gathered
"$PYTHON" - "$OUT" <<'EOF' >>"$SUMMARY" 2>&1
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
found = {}


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def wall(step):
    try:
        return float((out / f"{step}.seconds").read_text())
    except (OSError, ValueError):
        return None


for tag in ("cold", "warm"):
    rec = load(f"sweep_{tag}.json")
    if rec:
        found[f"sweep_{tag}"] = {
            "models": rec["num_configs"], "process_wall_s": wall(f"sweep_{tag}"), "sweep_wall_s": rec["wall_seconds"],
            "compile_s": sum(g["compile_seconds"] for g in rec["groups"]),
            "train_s": sum(g["train_seconds"] for g in rec["groups"]), "best_test_accuracy": rec["runs"][0]["test_accuracy"]}
for tag in ("fast97_cold", "fast97_warm", "plain", "highest"):
    rec = load(f"train_{tag}.json")
    if rec:
        found[tag] = {"process_wall_s": wall(tag if tag.startswith("fast") else f"train_{tag}"),
                      "wall_s": rec["wall_seconds"], "test_accuracy": rec["test_accuracy"],
                      "epoch_s": [h["seconds"] for h in rec["history"]], "compile_s": rec["compile_seconds"],
                      "train_s": rec["train_seconds"]}
bench = load("bench.json")
if bench:
    found["bench"] = {"machine": bench.get("machine"), "peak_gflops": bench.get("matmul_peak_gflops"),
                      "rows": {r["name"]: r["seconds_per_model_epoch"] for r in bench.get("rows", [])},
                      "ratios": bench.get("ratios")}
row, table = load("seed_row/seed.json"), load("seed_table/seed.json")
if row and table:
    found["seed"] = {"row_process_wall_s": wall("seed_row"), "table_process_wall_s": wall("seed_table"),
                     "ratio": (wall("seed_table") or 0) / (wall("seed_row") or 1),
                     "accuracies": {r["id"]: r["jaxmlp"] for r in table["rows"]},
                     "all_the_notebook_digits": all(r["meets"] for r in table["rows"])}
for name in ("tests_quick", "tests_slow_named", "tests_slow_other"):
    try:
        lines = (out / f"{name}.log").read_text().splitlines()
    except OSError:
        continue
    found[name] = next((line for line in reversed(lines) if " in " in line and ("passed" in line or "failed" in line)),
                       lines[-1] if lines else "")
    failed = sorted({line for line in lines if line.startswith(("FAILED", "ERROR"))})
    if failed:
        found[name + "_failed"] = failed
(out / "summary.json").write_text(json.dumps(found, indent=2))
print(json.dumps(found, indent=2))
EOF
note "total wall $(($(date +%s) - START)) s; logs in $OUT"
rm -rf "$SCRATCH"
