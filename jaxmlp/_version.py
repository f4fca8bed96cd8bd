"""The package's version, read from its installed metadata (``pyproject.toml`` is the one place it is
written); a source tree that was never installed says so."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jaxmlp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
