"""The exceptions of jaxmlp.data: one-line ValueErrors that name the folder, file or mirror at fault."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset folder or file that cannot be used (missing, malformed, inconsistent)."""


class IDXError(DataError):
    """An IDX file that cannot be parsed; the message names the file and what is wrong."""


class DownloadError(DataError):
    """Every mirror failed for some file; the message names each mirror and its failure."""
