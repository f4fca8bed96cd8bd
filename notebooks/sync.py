"""Pair each notebook's percent-format script (notebooks/NN_name.py) with its .ipynb.

The scripts are the source: ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose
lines are ``# `` comments (the jupytext "percent" format, so jupytext and editors read them too).
Each script also runs as plain Python (``cd notebooks && python 01_mnist_from_scratch.py``).
tests/test_notebooks.py checks that every .ipynb holds exactly its script's cells and runs them.

    python notebooks/sync.py --execute           # rebuild every .ipynb from its .py and store fresh outputs
    python notebooks/sync.py --execute 02        # only the notebooks whose name starts with 02
    python notebooks/sync.py                     # rebuild cells only; outputs of unchanged code cells kept
    python notebooks/sync.py --check             # exit 1 when an .ipynb's cells differ from its .py
    python notebooks/sync.py --from-ipynb 03     # write the .py back from an .ipynb edited in Jupyter

Execution runs the "python3" kernel with notebooks/ as its working directory and needs real MNIST, found
as the notebooks find it, through ``jaxmlp.load_dataset()``: $JAXMLP_DATA_DIR, else the jaxmlp cache
(downloaded there on first use).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent
NAMES = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300
MARKER = re.compile(r"^# %%(?: \[(markdown)\])?$")
# jupytext reads this header to pair the script with its .ipynb; sync.py skips it.
HEADER = """\
# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""
# Stored outputs must not leak this machine's layout (absolute paths); relative ones are fine.
ABSOLUTE_PATH_RE = re.compile(r"(?<![\w.])(/home/|/Users/|/root/|/tmp/|/work/|/private/|[A-Za-z]:\\)")


def parse_script(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] of a percent-format script; kind is "code" or "markdown"."""
    blocks: list[tuple[str, list[str]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        match = MARKER.match(line)
        if match:
            blocks.append(("markdown" if match.group(1) else "code", []))
        elif not blocks:
            if line and not line.startswith("#"):
                raise ValueError(f"line {n}: code before the first '# %%' marker")
        elif blocks[-1][0] == "markdown":
            if line not in ("", "#") and not line.startswith("# "):
                raise ValueError(f"line {n}: a markdown cell's lines must start with '# '")
            blocks[-1][1].append(line[2:])
        else:
            blocks[-1][1].append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in blocks]


def format_script(cells: list[tuple[str, str]]) -> str:
    """The percent-format script of [(kind, source)]: parse_script's inverse."""
    parts = []
    for kind, source in cells:
        if kind == "markdown":
            body = "\n".join(f"# {line}" if line else "#" for line in source.split("\n"))
            parts.append(f"# %% [markdown]\n{body}")
        else:
            parts.append(f"# %%\n{source}")
    return HEADER + "\n" + "\n\n".join(parts) + "\n"


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` built from its script, without outputs (stable ids, so rebuilds diff cleanly)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(parse_script((NOTEBOOK_DIR / f"{name}.py").read_text())):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = new(source)
        cell.id = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    return nb


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell in a fresh "python3" kernel with notebooks/ as the working directory.

    The kernel inherits this process's environment (so $JAXMLP_DATA_DIR reaches it). A cell that
    raises stops execution with nbclient's CellExecutionError.
    """
    from nbclient import NotebookClient

    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=timeout, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()
    return nb


def output_text(nb: nbformat.NotebookNode) -> str:
    """Every text the code cells printed or returned (stream, plain-text results, tracebacks)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(out["text"])
            if "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
            if "traceback" in out:
                parts.extend(out["traceback"])
    return "\n".join(parts)


def absolute_paths(nb: nbformat.NotebookNode) -> list[str]:
    """Lines of the outputs that show an absolute path (they would leak this machine's layout)."""
    return [line for line in output_text(nb).splitlines() if ABSOLUTE_PATH_RE.search(line)]


def _keep_outputs(new: nbformat.NotebookNode, old: nbformat.NotebookNode) -> int:
    """Copy outputs from old into new for code cells whose source is unchanged, up to the first changed
    one, and the kernel's metadata; returns how many code cells lost their outputs."""
    new.metadata = old.metadata
    old_code = [c for c in old.cells if c.cell_type == "code"]
    new_code = [c for c in new.cells if c.cell_type == "code"]
    changed = 0
    for i, cell in enumerate(new_code):
        if i < len(old_code) and old_code[i].source == cell.source and changed == 0:
            cell.outputs, cell.execution_count = old_code[i].outputs, old_code[i].execution_count
        else:
            changed += 1  # later cells may depend on this one: their old outputs are stale too
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python notebooks/sync.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks (a name or its prefix, e.g. 02); default: all")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="run the notebooks and store their outputs")
    mode.add_argument("--check", action="store_true", help="exit 1 if an .ipynb's cells differ from its .py")
    mode.add_argument("--from-ipynb", action="store_true", help="rewrite the .py from the .ipynb's cells")
    args = parser.parse_args(argv)
    names = [n for n in NAMES if not args.names or any(n.startswith(a.removesuffix(".ipynb").removesuffix(".py"))
                                                       for a in args.names)]
    if not names:
        parser.error(f"no notebook matches {args.names}; known: {NAMES}")
    status = 0
    for name in names:
        ipynb, script = NOTEBOOK_DIR / f"{name}.ipynb", NOTEBOOK_DIR / f"{name}.py"
        if args.from_ipynb:
            script.write_text(format_script(cells(read(name))))
            print(f"wrote notebooks/{script.name}")
            continue
        nb = build(name)
        if args.check:
            if not ipynb.exists() or cells(read(name)) != cells(nb):
                print(f"notebooks/{ipynb.name} differs from notebooks/{script.name}", file=sys.stderr)
                status = 1
            continue
        if args.execute:
            execute(nb)
            leaks = absolute_paths(nb)
            if leaks:
                print(f"{name} prints absolute paths, not saved:\n  " + "\n  ".join(leaks), file=sys.stderr)
                return 1
        elif ipynb.exists() and _keep_outputs(nb, read(name)):
            print(f"notebooks/{ipynb.name}: code changed, outputs cleared from there on; run with --execute",
                  file=sys.stderr)
        nbformat.write(nb, ipynb)
        print(f"wrote notebooks/{ipynb.name}")
    return status


if __name__ == "__main__":
    sys.exit(main())
