"""The docs cannot drift from the code.

* Every fenced ``python`` block of README.md and docs/**/*.md runs. The blocks of one file share a
  namespace and run in order, as a reader would type them, in a scratch folder. A block can be
  marked by an HTML comment on the line before its fence (invisible on GitHub and in the built
  docs): ``<!-- test: mnist -->`` needs the real MNIST (the file is skipped when it is absent, and
  fails under JAXMLP_REQUIRE_DATA=1, as every real-data test does); ``<!-- test: skip -->`` is
  shown but not run (a cluster launch, say). ``bash`` and other blocks are not run.
* Every public callable has a docstring that names each of its parameters: the names in
  ``jaxmlp.__all__`` and the public functions and classes of the documented modules (their
  ``__all__``, else the functions and classes defined in them or in their submodules). A class's
  parameters are its constructor's. Exempt: ``self``/``cls``, ``*args``/``**kwargs``, names that
  start with ``_``. The auto-generated docstring of a NamedTuple or dataclass ("Name(a, b)") counts
  as none.
* Every name in ``jaxmlp.__all__`` lives in a module that an API page documents (an ``automodule``
  directive in docs/api/), so it appears on the API pages.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

import jax
import pytest

from conftest import _mnist_dir

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

# ---------------------------------------------------------------- code blocks

FENCE = re.compile(r"^(?P<marks>(?:<!-- test: \w+ -->\n)?)```(?P<lang>[^\s`]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
                   re.M | re.S)


def markdown_files() -> list[Path]:
    files = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [f for f in files if f.is_file() and "_build" not in f.parts and not f.name.startswith("_")]


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """[(line number, mark, source)] of the fenced ``python`` blocks of a Markdown text; mark is ""
    or the word of a ``<!-- test: WORD -->`` comment on the line before the fence."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("python", "py", "python3"):
            continue
        mark = re.search(r"test: (\w+)", m.group("marks"))
        blocks.append((text.count("\n", 0, m.start("body")), mark.group(1) if mark else "", m.group("body")))
    return blocks


def _with_python_blocks() -> list[Path]:
    return [f for f in markdown_files() if python_blocks(f.read_text())]


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_block_parser():
    text = "x\n```python\na = 1\n```\n<!-- test: skip -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "", "a = 1\n"), (6, "skip", "b = 2\n")]


@pytest.mark.parametrize("path", _with_python_blocks(), ids=_id)
def test_markdown_python_blocks_run(path, tmp_path, monkeypatch):
    """The file's python blocks, in order, in one namespace, in a scratch folder."""
    blocks = python_blocks(path.read_text())
    if any(mark == "mnist" for _, mark, _ in blocks):
        found = _mnist_dir()
        if found is None:
            if os.environ.get("JAXMLP_REQUIRE_DATA") == "1":
                pytest.fail("JAXMLP_REQUIRE_DATA=1 but no MNIST found (set JAXMLP_DATA_DIR)")
            pytest.skip(f"{_id(path)} has a block that needs the real MNIST (set JAXMLP_DATA_DIR)")
        monkeypatch.setenv("JAXMLP_DATA_DIR", str(found))
    unknown = {mark for _, mark, _ in blocks} - {"", "mnist", "skip"}
    assert not unknown, f"{_id(path)}: unknown test marks {unknown}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for line, mark, source in blocks:
            if mark == "skip":
                continue
            code = compile("\n" * line + source, str(path), "exec")  # tracebacks point at the file's lines
            exec(code, namespace)
    finally:
        jax.config.update("jax_enable_x64", False)  # a block that switched it on leaves no trace


# ---------------------------------------------------------------- docstrings

# The modules the API pages document (docs/api/), besides the top-level names.
DOCUMENTED_MODULES = [
    "jaxmlp.data", "jaxmlp.model", "jaxmlp.losses", "jaxmlp.backprop", "jaxmlp.optim", "jaxmlp.schedules",
    "jaxmlp.engine", "jaxmlp.runs", "jaxmlp.evaluation", "jaxmlp.handlers", "jaxmlp.config", "jaxmlp.sweep",
    "jaxmlp.checkpoint", "jaxmlp.parallel", "jaxmlp.plots", "jaxmlp.notebook", "jaxmlp.transfer",
    "jaxmlp.augment", "jaxmlp.cnn", "jaxmlp.steps",
]
EXEMPT_PARAMS = {"self", "cls"}
AUTO_DOC = re.compile(r"^\w+\(.*\)$", re.S)  # what namedtuple and dataclass write when a class has no docstring


def public_names(module) -> list[str]:
    """A module's ``__all__``; without one, the functions and classes defined in it or its submodules."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(n for n, obj in vars(module).items()
                  if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and (getattr(obj, "__module__", "") or "").split(".")[:len(module.__name__.split("."))]
                  == module.__name__.split("."))


def _own_doc(obj) -> str | None:
    doc = obj.__doc__ if inspect.isclass(obj) else inspect.getdoc(obj)
    if not doc or (inspect.isclass(obj) and AUTO_DOC.match(doc.strip())):
        return None
    return inspect.cleandoc(doc)


def _parameters(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name not in EXEMPT_PARAMS and not p.name.startswith("_")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def docstring_problems(qualname: str, obj) -> list[str]:
    """What is missing from ``obj``'s docstring: nothing for constants and other non-callables."""
    if not (inspect.isclass(obj) or callable(obj)) or inspect.ismodule(obj):
        return []
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or hasattr(obj, "__wrapped__")):
        return []  # a dict, a partial, an instance: documented where it is defined
    doc = _own_doc(obj)
    if doc is None:
        return [f"{qualname}: no docstring"]
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return []  # an exception's constructor takes its message
    missing = [p for p in _parameters(obj) if not re.search(rf"(?<![\w]){re.escape(p)}(?![\w])", doc)]
    return [f"{qualname}: the docstring does not name {', '.join(missing)}"] if missing else []


def _module_problems(name: str) -> list[str]:
    module = importlib.import_module(name)
    problems = []
    for attr in public_names(module):
        problems += docstring_problems(f"{name}.{attr}", getattr(module, attr))
    return problems


def test_the_docstring_rule():
    def good(params, x, *args, key=None, **kwargs):
        """Loss of params on x; key: dropout."""

    def bad(params, lr):
        """Loss of params."""

    assert docstring_problems("good", good) == []
    assert docstring_problems("bad", bad) == ["bad: the docstring does not name lr"]
    assert docstring_problems("none", lambda a: a) == ["none: no docstring"]


@pytest.mark.parametrize("name", ["jaxmlp", *DOCUMENTED_MODULES])
def test_public_callables_document_their_parameters(name):
    problems = _module_problems(name)
    assert not problems, f"{len(problems)} public callables of {name}:\n" + "\n".join(problems)


def _documented_modules_in_api_pages() -> set[str]:
    found = set()
    for page in (DOCS / "api").rglob("*.md"):
        found |= set(re.findall(r"^\.\. automodule:: ([\w.]+)", page.read_text(), re.M))
        found |= set(re.findall(r"^```\{automodule\} ([\w.]+)", page.read_text(), re.M))
    return found


def test_every_top_level_name_is_on_the_api_pages():
    import jaxmlp

    documented = _documented_modules_in_api_pages()
    assert set(DOCUMENTED_MODULES) <= documented, f"modules without an API page: {set(DOCUMENTED_MODULES) - documented}"
    missing = []
    for name in jaxmlp.__all__:
        obj = getattr(jaxmlp, name)
        home = getattr(obj, "__module__", None)
        # The module that defines it, or a package above it that re-exports it, must be documented with it.
        owners = [m for m in documented if home == m or (home or "").startswith(m + ".")]
        if not any(name in public_names(importlib.import_module(m)) for m in owners):
            missing.append(f"{name} (defined in {home})")
    assert not missing, "names of jaxmlp.__all__ on no API page: " + ", ".join(missing)
