"""Sphinx configuration of the jaxmlp docs: MyST Markdown pages, the API from docstrings, the command
line from its argparse parsers, the notebooks with their stored outputs.

Build (offline; the extra installs Sphinx and its extensions)::

    pip install -e '.[docs]'
    sphinx-build -W -b html docs docs/_build/html

``JAXMLP_DOCS_EXECUTE=1`` executes the notebooks during the build instead of rendering the outputs
stored in them (needs the real MNIST: ``$JAXMLP_DATA_DIR``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import jaxmlp  # noqa: E402

project = "jaxmlp"
author = "the jaxmlp authors"
copyright = "the jaxmlp authors"  # noqa: A001
release = jaxmlp.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",                     # MyST Markdown and notebooks (brings myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",         # Google-style "Args:" / "Returns:" sections
    "sphinx.ext.mathjax",
    "sphinxarg.ext",               # the command-line reference from jaxmlp.cli.build_parser
    "jaxmlp_docs",                 # docs/_ext: summaries from __all__, TrainConfig's fields, notebooks
]

exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "results/*.md",
                    "results/reproduce/*.md"]
root_doc = "index"

# Every warning fails the build (-W), including references that don't resolve.
nitpicky = True
nitpick_ignore_regex = [
    # Types from outside jaxmlp in signatures: there is no intersphinx (the build is offline).
    (r"py:.*", r"(jax|jnp|np|numpy|optax|typing|collections|argparse|pathlib|os|io|matplotlib|concurrent)(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|object|None|type|callable|Callable|Any|Sequence"
               r"|Iterable|Iterator|Mapping|NamedTuple|Path|PathLike|Array|ArrayLike|PyTree|Params|LR|Schedule"
               r"|ndarray|Optional|Union|KeyboardInterrupt|ArithmeticError|ValueError|Exception|OSError"
               r"|AbstractContextManager|TextIO|Figure|Mesh|Sharding|NamedSharding|optional)"),
]

# API reference.
# The module pages list their members themselves (docs/_ext: jaxmlp-module), from the modules' __all__.
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
autosummary_generate = False   # tables only; the entries are documented by the module pages
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# MyST and notebooks.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force" if os.environ.get("JAXMLP_DOCS_EXECUTE") == "1" else "off"
nb_execution_timeout = 900          # a cell, in seconds
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True

smartquotes = False   # keep "--flag" and quotes as typed

# HTML.
html_theme = "sphinx_book_theme"
html_title = f"jaxmlp {release}"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []
html_last_updated_fmt = None
