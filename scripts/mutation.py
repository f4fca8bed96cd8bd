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
    "optim": ("jaxmlp/optim.py", ["tests/test_optim.py"]),
    "checkpoint": ("jaxmlp/checkpoint.py", ["tests/test_checkpoint.py"]),
    "config": ("jaxmlp/config.py", ["tests/test_train.py", "-k", "config or setting"]),
    "idx": ("jaxmlp/data/idx.py", ["tests/test_data.py"]),
    "engine": ("jaxmlp/engine.py", ["tests/test_engine.py"]),
}


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


def measure(module: str, workdir: Path, children: int, only_survivors: bool) -> tuple[int, int]:
    """Run the mutants of ``module``; return (killed, survived) and print each survivor's diff.

    Args:
        module: a key of ``CORE``.
        workdir: where the scratch copy lives (reused: mutmut caches its results there).
        children: mutants run at once.
        only_survivors: re-run only the mutants that survived the last run.
    """
    path, tests = CORE[module]
    dotted = path.removesuffix(".py").replace("/", ".")
    copy = workdir / module
    if not only_survivors:
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        _copy_repo(copy)
        _narrow_config(copy / "pyproject.toml", path, tests)
        names = [f"{dotted}*"]
    else:
        for name in (t for t in tests if t.endswith(".py")):  # the strengthened tests
            shutil.copy2(REPO / name, copy / name)
        names = _survivors(copy, dotted)
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names], cwd=copy,
                   stdout=subprocess.DEVNULL)
    statuses = re.findall(rf"^\s*({re.escape(dotted)}\.\S+): (\w+)", _mutmut(copy, "results", "--all", "true"), re.M)
    killed = sum(s == "killed" for _, s in statuses)
    survivors = [n for n, s in statuses if s == "survived"]
    for name in survivors:
        diff = [line for line in _mutmut(copy, "show", name).splitlines()
                if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        print(f"survived {name}: " + " | ".join(diff))
    print(f"{module}: {killed} killed, {len(survivors)} survived of {len(statuses)} "
          f"({100 * killed / max(len(statuses), 1):.1f}% before equivalents are set aside)")
    return killed, len(survivors)


def _survivors(copy: Path, dotted: str) -> list[str]:
    return re.findall(rf"^\s*({re.escape(dotted)}\.\S+): survived", _mutmut(copy, "results"), re.M)


def main(argv=None) -> int:
    """Measure the modules named on the command line (default: all of ``CORE``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("modules", nargs="*", choices=list(CORE), default=list(CORE), help="modules of CORE")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/jaxmlp-mutation"),
                   help="where the scratch copies live (default: /tmp/jaxmlp-mutation)")
    p.add_argument("--max-children", type=int, default=1, help="mutants run at once (default: 1)")
    p.add_argument("--only-survivors", action="store_true", help="re-run the last run's survivors")
    args = p.parse_args(argv)
    for module in args.modules or list(CORE):
        measure(module, args.workdir, args.max_children, args.only_survivors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
