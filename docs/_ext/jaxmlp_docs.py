"""What the jaxmlp docs add to Sphinx: summary tables that list a module's public names as the code
declares them, the ``TrainConfig`` fields from their own metadata, and the example notebooks.

* Which names a page shows comes from ``jaxmlp_api`` (``public_names``: a module's ``__all__``, else
  the functions and classes defined in it or its submodules), which ``tests/test_docs.py`` uses too,
  so what the test checks is what the pages show.
* ``.. jaxmlp-module:: MODULE``: a module's API page body: its docstring, an ``autosummary`` table of
  ``public_names(MODULE)`` and the autodoc entry of each, so no page keeps a hand-written list of
  names that could fall behind the code. A name re-exported from another documented module is
  documented once, at its home, and the tables link there. ``.. jaxmlp-summary:: MODULE`` is the
  table alone (the API index's table of ``jaxmlp.__all__``).
* ``TrainConfig``'s docstring gains one entry per field, written from the field's ``help``, choices
  and default: the text ``jaxmlp train --help`` shows.
* ``jaxmlp.NAME`` in a cross-reference resolves to where ``NAME`` is documented (``jaxmlp.train`` to
  ``jaxmlp.engine.train``).
* Signatures show defaults such as ``jnp.float32`` by name.
* NamedTuple fields' "Alias for field number N" entries are left out: the class docstring names them.
* The notebooks (``notebooks/*.ipynb``, stored with their outputs) are copied to ``docs/examples/``
  before the build reads its sources.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import shutil
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from jaxmlp_api import home_of, is_api_callable, public_names
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]


def _summary(module_name: str, current: str | None = None) -> list[str]:
    """An autosummary table of the module's public names, each linked to its home
    (``current``: the module whose page this is, whose own names are written bare)."""
    module = importlib.import_module(module_name)
    entries = []
    for name in public_names(module):
        obj = getattr(module, name)
        home = home_of(name, obj) or module_name
        if inspect.ismodule(obj):
            entries.append(f"   ~{obj.__name__}")
        elif current and home.startswith(current + "."):  # a submodule's page: autosummary wants it relative
            entries.append(f"   ~{home[len(current) + 1:]}.{name}")
        else:
            entries.append(f"   {name}" if home == current else f"   ~{home}.{name}")
    return [".. autosummary::", "", *entries, ""] if entries else []


def _members(module_name: str) -> list[str]:
    """autodoc directives for the public names (functions, classes, constants) whose home is this module."""
    module = importlib.import_module(module_name)
    lines = []
    for name in public_names(module):
        obj = getattr(module, name)
        if inspect.ismodule(obj) or home_of(name, obj) not in (module_name, None):
            continue  # a module has its own page; a re-exported name is documented at home
        if not is_api_callable(obj):  # a constant: its value, when short enough to read
            lines += [f".. autodata:: {module_name}.{name}", *(["   :no-value:"] if len(repr(obj)) > 100 else []), ""]
        elif inspect.isclass(obj) and issubclass(obj, BaseException):
            lines += [f".. autoexception:: {module_name}.{name}", ""]
        elif inspect.isclass(obj):
            lines += [f".. autoclass:: {module_name}.{name}", "   :members:", ""]
        else:
            lines += [f".. autofunction:: {module_name}.{name}", ""]
    return lines


class Summary(SphinxDirective):
    """``.. jaxmlp-summary:: MODULE``: the autosummary table of ``public_names(MODULE)``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        module = importlib.import_module(name)
        # A constant that no module page documents (a module without ``__all__`` lists only its
        # functions and classes) is documented here, under the name the table gives it.
        homeless = [n for n in public_names(module) if not is_api_callable(getattr(module, n))
                    and not inspect.ismodule(getattr(module, n)) and home_of(n, getattr(module, n)) is None]
        return self._parse([*_summary(name), *(f".. autodata:: {name}.{n}" for n in homeless), ""])

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        holder = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, holder)
        return list(holder.children)


class Module(Summary):
    """``.. jaxmlp-module:: MODULE``: the module's docstring, its summary table, then each public function
    and class defined there (a name it re-exports is documented, and linked, at its home)."""

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        return self._parse([f".. automodule:: {name}", "", *_summary(name, current=name), *_members(name)])


def _config_fields(app, what, name, obj, options, lines) -> None:
    """Append ``TrainConfig``'s fields, each with its help text, choices and default."""
    if what != "class" or not dataclasses.is_dataclass(obj) or not inspect.isclass(obj):
        return
    helped = [f for f in dataclasses.fields(obj) if f.metadata.get("help")]
    if not helped:
        return
    lines += ["", "**Fields** (each is also a flag of ``jaxmlp train``):", ""]
    for f in helped:
        default = f.default if f.default is not dataclasses.MISSING else None
        choices = f.metadata.get("choices")
        extra = (f" One of {', '.join(f'``{c}``' for c in choices)}." if choices else "") + f" Default ``{default!r}``."
        role = " Traced (changing it does not recompile)." if f.metadata.get("hparam") else ""
        help_text = str(f.metadata["help"]).replace("*", r"\*")
        lines += [f"* ``{f.name}``: {help_text}.{extra}{role}"]
    lines.append("")


def _no_borrowed_docstring(app, what, name, obj, options, lines) -> None:
    """A constant has no docstring of its own: leave out the one of its type (``dict``'s, ``tuple``'s)."""
    if what in ("data", "attribute") and lines:
        own = inspect.getdoc(type(obj)) or ""
        if own and lines[0].strip() and own.startswith(lines[0].strip()):
            lines[:] = []


def _skip_field_aliases(app, what, name, obj, skip, options):
    """Leave out NamedTuple fields whose only doc is Python's "Alias for field number N"."""
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def _readable_defaults(app, what, name, obj, options, signature, return_annotation):
    """Defaults shown as they are written: ``dtype=jnp.float32``, not ``<class 'jax.numpy.float32'>`` (which
    Sphinx cannot parse)."""
    if signature:
        signature = re.sub(r"<class '(?:jax\.numpy|numpy)\.(\w+)'>", r"jnp.\1", signature)
        signature = re.sub(r"<(?:function|class) ([\w.]+)(?: at 0x[0-9a-f]+)?'?>", r"\1", signature)
    return signature, return_annotation


def _top_level_names(app, env, node, contnode):
    """Resolve ``jaxmlp.NAME`` (a name of ``jaxmlp.__all__``) to the page that documents it, so prose can
    write :func:`jaxmlp.train` where the object lives at ``jaxmlp.engine.train``."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("jaxmlp.") or target.count(".") != 1:
        return None
    import jaxmlp

    name = target.split(".", 1)[1]
    if name not in jaxmlp.__all__:
        return None
    home = home_of(name, getattr(jaxmlp, name))
    if home is None:
        return None
    domain = env.get_domain("py")
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], f"{home}.{name}", node, contnode)


def copy_notebooks(app) -> None:
    """notebooks/NN_name.ipynb -> docs/examples/NN_name.ipynb (only when changed, so rebuilds stay incremental)."""
    target = Path(app.srcdir) / "examples"
    target.mkdir(exist_ok=True)
    for source in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        copy = target / source.name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)


def setup(app):
    app.add_directive("jaxmlp-summary", Summary)
    app.add_directive("jaxmlp-module", Module)
    app.connect("builder-inited", copy_notebooks)
    app.connect("autodoc-process-docstring", _config_fields)
    app.connect("autodoc-process-docstring", _no_borrowed_docstring)
    app.connect("autodoc-skip-member", _skip_field_aliases)
    app.connect("autodoc-process-signature", _readable_defaults)
    app.connect("missing-reference", _top_level_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
