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
  start with ``_``, and dataclass fields whose metadata carries a ``help`` text (``TrainConfig``'s:
  the flags and the API page show that text). The auto-generated docstring of a NamedTuple or
  dataclass ("Name(a, b)") counts as none.
* Every name in ``jaxmlp.__all__`` lives in a module that an API page documents (an ``automodule``
  directive in docs/api/), so it appears on the API pages.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import shlex
import sys
import textwrap
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


# Pages whose blocks take more than a few seconds on a 2-core machine, and why (besides those that train on
# the real MNIST, which are all slow): `python -m pytest -m "not slow"` leaves them out.
SLOW_PAGES = {
    "docs/guides/training.md": "about ten small training runs, each its own compiled program",
    "docs/guides/sweeps.md": "two vmapped groups, an ensemble and their compilations",
    "docs/guides/gradients.md": "eager float64 gradients and finite differences",
}


def _with_python_blocks() -> list:
    """The Markdown files to run, each a test; the slow ones marked."""
    params = []
    for f in markdown_files():
        blocks = python_blocks(f.read_text())
        if blocks:
            slow = _id(f) in SLOW_PAGES or any(mark == "mnist" for _, mark, _ in blocks)
            params.append(pytest.param(f, marks=[pytest.mark.slow] if slow else [], id=_id(f)))
    return params


def _id(path: Path) -> str:
    """The file's path from the repository root, as the test's id."""
    return str(path.relative_to(REPO))


def test_the_block_parser():
    text = "x\n```python\na = 1\n```\n<!-- test: skip -->\n```python\nb = 2\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "", "a = 1\n"), (6, "skip", "b = 2\n")]


@pytest.mark.parametrize("path", _with_python_blocks())
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


def cli_examples(text: str) -> list[str]:
    """The ``jaxmlp ...`` command lines of a Markdown text's ``bash`` blocks, from ``jaxmlp`` on, comments
    and line continuations removed; lines that use shell variables are left out."""
    lines = []
    for m in FENCE.finditer(text):
        if m.group("lang") not in ("bash", "sh", "console"):
            continue
        for line in m.group("body").replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "jaxmlp" in words and "$" not in line:
                lines.append(shlex.join(words[words.index("jaxmlp"):]))
    return lines


@pytest.mark.parametrize("path", [f for f in markdown_files() if cli_examples(f.read_text())], ids=_id)
def test_cli_examples_parse(path):
    """Every ``jaxmlp`` command shown in a bash block names a subcommand and flags that exist."""
    from jaxmlp.cli import build_parser
    from jaxmlp.cli.common import UsageError

    for line in cli_examples(path.read_text()):
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except (UsageError, SystemExit) as err:
            pytest.fail(f"{_id(path)}: `{line}` does not parse: {err}")


# What a code cell of the built site shows without scrolling sideways at 1280 px; the library's own lines
# may be longer (ruff's line-length).
CODE_WIDTH = 88
NOTEBOOK_CELL = re.compile(r"^# %%(?: \[(markdown)\])?$")


def markdown_code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of each line of a Markdown text's fenced code blocks; MyST directives
    (``{toctree}``, ``{include}``, ...) other than ``{code-block}`` hold no code and are left out."""
    lines = []
    for m in FENCE.finditer(text):
        lang = m.group("lang")
        if lang.startswith("{") and lang not in ("{code-block}", "{code-cell}", "{code}"):
            continue
        first = text.count("\n", 0, m.start("body")) + 1
        lines += [(first + i, line) for i, line in enumerate(m.group("body").splitlines())]
    return lines


def notebook_code_lines(script: str) -> list[tuple[int, str]]:
    """(line number, line) of a percent-format notebook script's code: its code cells, and the fenced
    blocks inside its markdown cells (without the ``# `` that starts each markdown line)."""
    lines, kind, fenced = [], None, False
    for n, line in enumerate(script.splitlines(), start=1):
        cell = NOTEBOOK_CELL.match(line)
        if cell:
            kind, fenced = ("markdown" if cell.group(1) else "code"), False
        elif kind == "code":
            lines.append((n, line))
        elif kind == "markdown":
            text = line[2:]
            if text.lstrip().startswith("```"):
                fenced = not fenced
            elif fenced:
                lines.append((n, text))
    return lines


def test_the_code_line_readers():
    text = "a\n```python\nx = 1\n```\n```{toctree}\nlong\n```\n```bash\nls\n```\n"
    assert markdown_code_lines(text) == [(3, "x = 1"), (9, "ls")]
    script = "# %% [markdown]\n# prose\n# ```\n# jaxmlp train\n# ```\n\n# %%\nx = 1\n"
    assert notebook_code_lines(script) == [(4, "jaxmlp train"), (8, "x = 1")]


def test_code_fits_the_page():
    """Every code line of the docs' code blocks and of the notebooks (code cells, and code blocks in
    their markdown) is at most CODE_WIDTH columns, so the built pages show it without scrolling."""
    sources = [(f, markdown_code_lines(f.read_text())) for f in markdown_files() if f.name != "README.md"]
    sources += [(f, notebook_code_lines(f.read_text())) for f in sorted((REPO / "notebooks").glob("[0-9]*.py"))]
    long = [f"{_id(f)}:{n}: {len(line)} columns" for f, lines in sources for n, line in lines
            if len(line) > CODE_WIDTH]
    assert not long, f"{len(long)} code lines over {CODE_WIDTH} columns:\n" + "\n".join(long)


MACHINE_PATH = re.compile(r"(?<![\w.])(/home/|/Users/|/root/|/work/|/private/|[A-Za-z]:\\[\w])")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_the_readme_is_a_front_page():
    """The README stays short, and no page keeps a measurement diary: no dates and no paths of the machine
    the text was written on (the generated results fragment carries its own date)."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 160
    for path in markdown_files():
        if path.parent.name == "results":
            continue
        text = path.read_text()
        assert not MACHINE_PATH.search(text), f"{_id(path)}: a machine path: {MACHINE_PATH.search(text).group()}"
        assert not DATE.search(text), f"{_id(path)}: a date: {DATE.search(text).group()}"


# ---------------------------------------------------------------- docstrings

# What the API pages show is what this file checks: the docs extension's module list and public names.
sys.path.insert(0, str(DOCS / "_ext"))
from jaxmlp_api import API_MODULES, home_of, is_api_callable, public_names  # noqa: E402

EXEMPT_PARAMS = {"self", "cls"}
AUTO_DOC = re.compile(r"^\w+\(.*\)$", re.S)  # what namedtuple and dataclass write when a class has no docstring


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
    helped = set()
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        helped = {f.name for f in dataclasses.fields(obj) if f.metadata.get("help")}
    missing = [p for p in _parameters(obj)
               if p not in helped and not re.search(rf"(?<![\w]){re.escape(p)}(?![\w])", doc)]
    return [f"{qualname}: the docstring does not name {', '.join(missing)}"] if missing else []


def _module_problems(name: str) -> list[str]:
    """The problems of the public callables whose home (the page that documents them) is ``name``: a
    name re-exported elsewhere is checked once, where it is documented."""
    module = importlib.import_module(name)
    problems = []
    for attr in public_names(module):
        obj = getattr(module, attr)
        if home_of(attr, obj) in (name, None):
            problems += docstring_problems(f"{name}.{attr}", obj)
    return problems


def test_the_docstring_rule():
    def good(params, x, *args, key=None, **kwargs):
        """Loss of params on x; key: dropout."""

    def bad(params, lr):
        """Loss of params."""

    assert docstring_problems("good", good) == []
    assert docstring_problems("bad", bad) == ["bad: the docstring does not name lr"]
    assert docstring_problems("none", lambda a: a) == ["none: no docstring"]


@pytest.mark.parametrize("name", API_MODULES)  # every name of jaxmlp.__all__ has its home among them
def test_public_callables_document_their_parameters(name):
    problems = _module_problems(name)
    assert not problems, f"{len(problems)} public callables of {name}:\n" + "\n".join(problems)


# The top-level names are held to napoleon's Google-style sections: "Args:" with an entry per parameter
# and "Returns:" (or "Yields:") when something comes back, so that their API entries show both.
SECTION_HEADER = re.compile(r"^(\w[\w ]*):[ \t]*$")
ENTRY = re.compile(r"\s*(?P<names>[^:(]+?)\s*(\([^)]*\))?\s*:")
NO_RESULT = {"None", "NoReturn", "Never"}


def doc_sections(doc: str) -> dict[str, str]:
    """{header: body} of a docstring's Google-style sections: a header alone on an unindented line
    ("Args:"), its body the indented lines below it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in inspect.cleandoc(doc).splitlines():
        if SECTION_HEADER.match(line):
            current = SECTION_HEADER.match(line).group(1)
            sections[current] = []
        elif current is not None and line.strip() and not line[0].isspace():
            current = None
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(body) for name, body in sections.items()}


def entry_names(body: str) -> set[str]:
    """The names a section's entries document: ``name: ...``, ``name (type): ...``, ``a, b: ...`` at
    the section's first indentation (``*args`` as ``args``)."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return set()
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    names: set[str] = set()
    for line in lines:
        entry = ENTRY.match(line) if len(line) - len(line.lstrip()) == indent else None
        if entry:
            names |= {name.strip().lstrip("*") for name in entry.group("names").split(",")}
    return names


def returns_something(fn) -> bool:
    """Whether ``fn`` returns a value: by its return annotation, else by a ``return VALUE`` or a
    ``yield`` in its source."""
    try:
        annotation = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    if annotation is inspect.Signature.empty:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
        except (OSError, TypeError, SyntaxError):
            return True
        return any(isinstance(node, (ast.Yield, ast.YieldFrom)) or (
            isinstance(node, ast.Return) and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None))
            for node in ast.walk(tree.body[0]))
    return annotation is not None and str(getattr(annotation, "__name__", annotation)) not in NO_RESULT


def section_problems(qualname: str, obj) -> list[str]:
    """What napoleon would not show for ``obj``: a function's missing "Args:" entries and "Returns:"; a
    class's missing "Args:"/"Attributes:" entries for its constructor's parameters (an exception's own
    ``__init__`` only; ``help``-carrying dataclass fields exempt), and the same for its public methods."""
    doc = _own_doc(obj)
    if doc is None:
        return [f"{qualname}: no docstring"]
    sections = doc_sections(doc)
    if inspect.isclass(obj):
        own_init = not issubclass(obj, BaseException) or "__init__" in vars(obj)
        helped = {f.name for f in dataclasses.fields(obj) if f.metadata.get("help")} \
            if dataclasses.is_dataclass(obj) else set()
        params = [p for p in (_parameters(obj) if own_init else []) if p not in helped]
        named = entry_names(sections.get("Args", "")) | entry_names(sections.get("Attributes", ""))
        missing = [p for p in params if p not in named]
        problems = [f"{qualname}: no Args: or Attributes: entry for {', '.join(missing)}"] if missing else []
        for name, member in vars(obj).items():
            member = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if not name.startswith("_") and inspect.isfunction(member):
                problems += section_problems(f"{qualname}.{name}", member)
        return problems
    problems = []
    missing = [p for p in _parameters(obj) if p not in entry_names(sections.get("Args", ""))]
    if missing:
        problems.append(f"{qualname}: no Args: entry for {', '.join(missing)}")
    if returns_something(obj) and not {"Returns", "Yields"} & sections.keys():
        problems.append(f"{qualname}: no Returns: section")
    return problems


def test_the_section_rule():
    def good(params, x, *args, key=None, **kwargs) -> float:
        """Loss of params on x.

        Args:
            params, x: the model's.
            key (jax.Array): dropout.

        Returns:
            The loss.
        """

    def bad(params, lr):
        """Loss of params; lr is named but has no entry.

        Args:
            params: the model's.
        """
        return params

    def quiet(path) -> None:
        """Writes nothing back.

        Args:
            path: where.
        """

    class Pair:
        """Two numbers.

        Attributes:
            a: the first.
        """

        def __init__(self, a, b):
            self.a, self.b = a, b

        def total(self):
            """Their sum."""
            return self.a + self.b

    assert section_problems("good", good) == []
    assert section_problems("quiet", quiet) == []
    assert section_problems("bad", bad) == ["bad: no Args: entry for lr", "bad: no Returns: section"]
    assert section_problems("Pair", Pair) == ["Pair: no Args: or Attributes: entry for b",
                                              "Pair.total: no Returns: section"]


def _top_level_callables() -> list:
    import jaxmlp

    return [name for name in jaxmlp.__all__ if is_api_callable(getattr(jaxmlp, name))]


@pytest.mark.parametrize("name", _top_level_callables())
def test_top_level_callables_have_args_and_returns_sections(name):
    """Each callable of ``jaxmlp.__all__`` (a class: its docstring and its public methods) has an
    "Args:" entry per parameter and a "Returns:" section when it returns something."""
    import jaxmlp

    problems = section_problems(f"jaxmlp.{name}", getattr(jaxmlp, name))
    assert not problems, "\n".join(problems)


# The API pages whose docstrings do not have their sections yet: they are held to the parameter rule above
# only. Take a module out of this set once its public callables have "Args:" and "Returns:".
SECTIONS_PENDING = {"jaxmlp.members", "jaxmlp.sweep", "jaxmlp.parallel"}


@pytest.mark.parametrize("name", [m for m in API_MODULES if m not in SECTIONS_PENDING])
def test_api_pages_have_args_and_returns_sections(name):
    """The public callables documented on the module's API page follow the top-level names' rule."""
    module = importlib.import_module(name)
    problems = [p for attr in public_names(module) if home_of(attr, getattr(module, attr)) in (name, None)
                and is_api_callable(getattr(module, attr))
                for p in section_problems(f"{name}.{attr}", getattr(module, attr))]
    assert not problems, f"{len(problems)} problems in {name}:\n" + "\n".join(problems)


def _modules_with_a_page() -> set[str]:
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found |= set(re.findall(r"^\.\. jaxmlp-module:: ([\w.]+)", page.read_text(), re.M))
    return found


def test_every_top_level_name_is_on_the_api_pages():
    """Each public module has a page, and each name of ``jaxmlp.__all__`` is documented on one of them."""
    import jaxmlp

    pages = _modules_with_a_page()
    assert set(API_MODULES) <= pages, f"modules without an API page: {sorted(set(API_MODULES) - pages)}"
    # A constant without a home is documented on the API index itself (docs/_ext: jaxmlp-summary).
    homeless = [name for name in jaxmlp.__all__ if home_of(name, getattr(jaxmlp, name)) is None
                and (is_api_callable(getattr(jaxmlp, name)) or inspect.ismodule(getattr(jaxmlp, name)))]
    assert not homeless, f"names of jaxmlp.__all__ on no API page: {homeless}"


# ---------------------------------------------------------------- notebooks and generated pages


def test_the_notebooks_hold_their_pictures():
    """The docs render each notebook's stored outputs: a notebook that draws (matplotlib, jaxmlp.plots, an
    Image it displays) must store its pictures."""
    import json

    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    for path in notebooks:
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if not re.search(r"\bplt\.|\bplots\.|display\(", code):
            continue
        outputs = [o for cell in cells for o in cell.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} draws but stores no picture"


def test_bench_markdown_is_stamped_and_has_no_paths():
    """``jaxmlp bench --markdown``: the date, the machine and the versions stamped, one table row per
    bench row, and no path from the machine it ran on."""
    from collections import defaultdict

    from jaxmlp.bench import format_markdown

    row = {"name": "numpy notebook", "batch_size": 32, "models": 1, "seconds_per_model_epoch": 2.0,
           "samples_per_second": 30000.0, "gflops": 14.0, "fraction_of_peak": 0.1, "compile_seconds": None}
    report = {"machine": {"cpu": "Some CPU", "cores": 2, "system": "Linux", "python": "3.11.7", "backend": "gpu",
                          "device": "Some GPU", "device_count": 1, "jax": "1.0", "jaxlib": "1.1", "numpy": "2.0"},
              "data": "mnist from /home/someone/data/mnist", "train_examples": 60000, "layer_sizes": [784, 10],
              "lr": 0.1, "flops_per_epoch": 2.7e10, "matmul_peak_gflops": 100.0, "matmul_peak_size": 2048,
              "timing": "best of 5", "rows": [row, {**row, "name": "sweep", "models": 4}],
              "ratios": defaultdict(lambda: 1.0), "recompiles_while_timed": 0, "peak_rss_mb": 100.0}
    text = format_markdown(report, date="2030-01-02")
    for stamp in ("2030-01-02", "Some CPU, 2 cores", "Some GPU", "jax 1.0", "jaxlib 1.1", "numpy 2.0", "mnist"):
        assert stamp in text
    assert "/home/" not in text
    assert sum(line.startswith("| numpy notebook |") or line.startswith("| sweep |") for line in text.splitlines()) == 2
