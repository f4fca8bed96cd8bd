"""Mutation testing of jaxmlp's core, module by module (not in CI: 1-2 s a mutant on 2 cores; docs/mutation.md
holds the scores, docs/contributing.md "Mutation testing" the how-to).

    pip install mutmut==3.8.1
    python scripts/mutation.py losses model            # the modules to measure (default: every CORE module)
    python scripts/mutation.py losses --only-survivors  # after strengthening the tests: re-run the survivors

Each module is mutated in a scratch copy of the repository (mutmut writes a ``mutants/`` folder there, so
the work tree stays clean; the copy is kept in --workdir so a second run reuses mutmut's cache), with
``[tool.mutmut]`` narrowed to that module and its own tests (``CORE``). mutmut runs every mutant in a
child of a fork server (``process_isolation = "forkserver"``: its default fork mode deadlocks on the
threads JAX starts) under ``pytest -n 0 -m "not slow"``. Prints killed, survived, the score, and the
diff of each survivor, to be killed by a test or listed as equivalent in docs/contributing.md.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module -> (its file, the tests that are its own)
CORE = {
    "model": ("jaxmlp/model.py", ["tests/test_model.py", "tests/test_losses.py"]),
    "losses": ("jaxmlp/losses.py", ["tests/test_losses.py", "tests/test_model.py"]),
    "backprop": ("jaxmlp/backprop.py", ["tests/test_backprop.py"]),
    "optim": ("jaxmlp/optim/*.py", ["tests/test_optim.py", "tests/test_transforms.py"]),  # a package: its modules
    "checkpoint": ("jaxmlp/checkpoint.py", ["tests/test_checkpoint.py"]),
    "config": ("jaxmlp/config.py", ["tests/test_config.py"] + [f"tests/test_train.py::{t}" for t in (
        "test_config_validation", "test_config_from_dict_refuses_unknown_settings_and_round_trips",
        "test_every_setting_is_a_flag_with_its_default_in_the_help")]),
    "idx": ("jaxmlp/data/idx.py", ["tests/test_data.py"]),
    # the step's own tests are split: the user-facing ones in test_engine, the built-in MLP's in test_train
    "engine": ("jaxmlp/engine.py", ["tests/test_engine.py"] + [f"tests/test_train.py::{t}" for t in (
        "test_sgd_step_is_p_minus_lr_grad", "test_batch_slices_keep_the_short_last_batch",
        "test_a_chunk_equals_the_python_loop_of_steps", "test_chunks_of_any_size_give_the_same_state_bit_for_bit",
        "test_manual_and_autodiff_chunks_agree", "test_epoch_loss_weights_the_short_batch_and_sums_over_chunks")]),
}

# Where only part of a module is core: the functions to mutate (mutmut's names, fnmatch patterns after
# the module's dotted name). The engine's step: the epoch order, the compiled step, chunk and fused epoch,
# and the host-side loss bookkeeping; its loop, handlers and checkpoint glue are exercised by test_train.
PARTS = {
    "engine": ["x_batch_slices__*", "x\u01c1FunctionTask\u01c1*", "x_init_state__*", "x__epoch_keys__*",
               "x_epoch_order__*", "x_steps_per_epoch__*", "x__step_fn__*", "x__aux_zeros__*", "x_chunk__*",
               "x_fused_epoch__*", "x_epoch_loss__*", "x_loss_sum__*"],
}


def _in_parts(name: str, dotted: str, module: str) -> bool:
    """Whether mutant ``name`` lies in the part of ``module`` that is core (``PARTS``; all of it by default)."""
    return any(fnmatch.fnmatch(name, f"{dotted}.{part}") for part in PARTS.get(module, ["*"]))


def _names_re(dotted: str) -> str:
    """A regex of the mutant names under ``dotted`` (a module's dotted name, or a package's ``pkg.*``)."""
    return re.escape(dotted).replace(r"\*", r"\w+")


def _test_files(tests: list[str]) -> list[str]:
    """The test files named in a ``CORE`` selection (node ids ``file.py::test`` give their file)."""
    return sorted({t.split("::")[0] for t in tests if ".py" in t})


def _copy_repo(dest: Path) -> None:
    """The files git tracks or would track (not .venv, not ignored outputs) into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _narrow_config(pyproject: Path, path: str, tests: list[str]) -> None:
    """``[tool.mutmut]`` of the copy: mutate only ``path``, select only ``tests``."""
    text = re.sub(r"\n\[tool\.mutmut\]\n(?:[^\[\n].*\n|\n)*", "\n", pyproject.read_text())
    as_list = lambda items: "[" + ", ".join(f'"{i}"' for i in items) + "]"  # noqa: E731
    pyproject.write_text(text + f"""
[tool.mutmut]
source_paths = ["jaxmlp/"]
only_mutate = {as_list([path])}
pytest_add_cli_args = ["-n", "0", "-p", "no:cacheprovider", "-m", "not slow", "-q"]
pytest_add_cli_args_test_selection = {as_list(tests)}
process_isolation = "forkserver"
""")


def _mutmut(workdir: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=workdir, capture_output=True,
                          text=True).stdout


def measure(module: str, workdir: Path, children: int, only_survivors: bool, sample: int = 0) -> tuple[int, int]:
    """Run the mutants of ``module``; return (killed, survived) and print each survivor's diff.

    Args:
        module: a key of ``CORE``.
        workdir: where the scratch copy lives (reused: mutmut caches its results there).
        children: mutants run at once.
        only_survivors: re-run only the mutants that survived the last run.
        sample: run only this many of the module's mutants, drawn at random (seed 0); 0: all of them.
    """
    path, tests = CORE[module]
    dotted = path.removesuffix(".py").replace("/", ".")
    copy = workdir / module
    if not only_survivors:
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        _copy_repo(copy)
        _narrow_config(copy / "pyproject.toml", path, tests)
        names = [f"{dotted}.{part}" for part in PARTS.get(module, ["*"])]
        if sample:
            names = _sample(copy, path, dotted, module, sample)
            (copy / "sampled-mutants.txt").write_text("\n".join(names) + "\n")
    else:
        for name in _test_files(tests):  # the strengthened tests
            shutil.copy2(REPO / name, copy / name)
        _narrow_config(copy / "pyproject.toml", path, tests)  # CORE's selection may have grown too
        names = _survivors(copy, dotted)
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names], cwd=copy,
                   stdout=subprocess.DEVNULL)
    sampled = copy / "sampled-mutants.txt"  # a sampled run's mutants; the survivors' re-run keeps the sample
    wanted = set(sampled.read_text().split()) if sampled.exists() else None
    statuses = [(n, s) for n, s in re.findall(rf"^\s*({_names_re(dotted)}\.\S+): (\w[\w ]*)",
                                              _mutmut(copy, "results", "--all", "true"), re.M)
                if _in_parts(n, dotted, module)
                and (wanted is None or n in wanted)]
    killed = sum(s in ("killed", "timeout") for _, s in statuses)
    # "no tests": no test reaches the function; it counts against the score like a survivor
    survivors = [n for n, s in statuses if s in ("survived", "no tests", "suspicious")]
    for name in survivors:
        diff = [line for line in _mutmut(copy, "show", name).splitlines()
                if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        print(f"survived {name}: " + " | ".join(diff))
    print(f"{module}: {killed} killed, {len(survivors)} survived of {len(statuses)} "
          f"({100 * killed / max(len(statuses), 1):.1f}% before equivalents are set aside"
          + (f"; a random sample of the module's mutants, 95% interval {_wilson(killed, len(statuses))})"
             if wanted is not None else ")"))
    return killed, len(survivors)


def _sample(copy: Path, path: str, dotted: str, module: str, size: int) -> list[str]:
    """``size`` of the module's mutant names (within ``PARTS``), drawn with seed 0.

    mutmut generates every mutant (and collects which tests reach which function) before it filters by
    name, so a first run with a name that matches nothing does exactly that; its names are then read
    from the ``.meta`` file it wrote.
    """
    subprocess.run([sys.executable, "-m", "mutmut", "run", f"{dotted}.x_no_such_function__*"], cwd=copy,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    keys = [n for meta in sorted((copy / "mutants").glob(f"{path}.meta"))  # one .meta per file of a package
            for n in json.loads(meta.read_text())["exit_code_by_key"]]
    names = sorted(n for n in keys if _in_parts(n, dotted, module))
    return sorted(random.Random(0).sample(names, min(size, len(names))))


def _wilson(k: int, n: int) -> str:
    """The Wilson score interval of k successes in n draws, at 95%, as "lo-hi%"."""
    if n == 0:
        return "n/a"
    z, p = 1.96, k / n
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)
    return f"{100 * lo:.0f}-{100 * hi:.0f}%"


def _survivors(copy: Path, dotted: str) -> list[str]:
    return re.findall(rf"^\s*({_names_re(dotted)}\.\S+): (?:survived|no tests|suspicious)",
                      _mutmut(copy, "results", "--all", "true"), re.M)


def _jax_started_at_import(tests: list[str]) -> list[str]:
    """The test files whose import starts JAX's backend (a JAX array built at module level or in a
    ``parametrize``). The fork server imports them before it forks: the children then inherit JAX's
    threads, deadlock, and mutmut records each mutant as a timeout, that is as killed."""
    probe = ("import importlib, sys; sys.path.insert(0, 'tests'); from jax._src import xla_bridge; "
             "importlib.import_module(sys.argv[1]); print(bool(xla_bridge._backends))")
    return [f for f in _test_files(tests) if subprocess.run([sys.executable, "-c", probe, Path(f).stem], cwd=REPO,
                                               capture_output=True, text=True).stdout.strip() != "False"]


def main(argv=None) -> int:
    """Measure the modules named on the command line (default: all of ``CORE``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", choices=list(CORE), default=list(CORE), help="modules of CORE")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/jaxmlp-mutation"),
                   help="where the scratch copies live (default: /tmp/jaxmlp-mutation)")
    p.add_argument("--max-children", type=int, default=1, help="mutants run at once (default: 1)")
    p.add_argument("--only-survivors", action="store_true", help="re-run the last run's survivors")
    p.add_argument("--sample", type=int, default=0,
                   help="run only N of each module's mutants, drawn at random (seed 0); default: all")
    args = p.parse_args(argv)
    for module in args.modules or list(CORE):
        started = _jax_started_at_import(CORE[module][1])
        if started:
            print(f"error: importing {', '.join(started)} starts JAX (an array built at import or in a "
                  "parametrize); build it inside the test, or every mutant times out", file=sys.stderr)
            return 1
        measure(module, args.workdir, args.max_children, args.only_survivors, args.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
