"""Which names the API pages show, shared by the docs extension (``jaxmlp_docs``) and
``tests/test_docs.py``, so that the test checks exactly what the pages document. No Sphinx here: the
tests import it without the docs extra.
"""
from __future__ import annotations

import importlib
import inspect

# The modules with an API page, in the order a top-level name looks for its home: a name of
# ``jaxmlp.__all__`` links to the first of these that lists it (the module that defines it first).
API_MODULES = [
    "jaxmlp.model", "jaxmlp.models", "jaxmlp.activations", "jaxmlp.losses", "jaxmlp.backprop", "jaxmlp.optim",
    "jaxmlp.optim.schedules", "jaxmlp.optim.registry", "jaxmlp.engine", "jaxmlp.events", "jaxmlp.spec",
    "jaxmlp.run_state", "jaxmlp.runs", "jaxmlp.evaluation", "jaxmlp.handlers", "jaxmlp.divergence", "jaxmlp.config",
    "jaxmlp.data", "jaxmlp.members", "jaxmlp.sweep", "jaxmlp.checkpoint", "jaxmlp.fileio", "jaxmlp.parallel",
    "jaxmlp.plots", "jaxmlp.notebook", "jaxmlp.transfer", "jaxmlp.augment", "jaxmlp.cnn", "jaxmlp.steps",
    "jaxmlp.reproduce", "jaxmlp.manifest",
]


def public_names(module) -> list[str]:
    """A module's ``__all__``; without one, the functions and classes defined in it or its submodules."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    parts = module.__name__.split(".")

    def at_home(obj) -> bool:
        return (getattr(obj, "__module__", "") or "").split(".")[:len(parts)] == parts

    return sorted(n for n, obj in vars(module).items()
                  if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and at_home(obj))


def is_api_callable(obj) -> bool:
    """A function or class (also a jitted or wrapped function), as opposed to a constant."""
    return inspect.isclass(obj) or inspect.isfunction(obj) or hasattr(obj, "__wrapped__")


def home_of(name: str, obj) -> str | None:
    """The documented module whose page holds ``obj`` (public there under ``name``); for a module, its
    own page."""
    if inspect.ismodule(obj):
        return obj.__name__ if obj.__name__ in API_MODULES else None
    candidates = sorted(API_MODULES, key=lambda m: m != getattr(obj, "__module__", None))
    for module_name in candidates:
        module = importlib.import_module(module_name)
        if getattr(module, name, None) is obj and name in public_names(module):
            return module_name
    return None
