"""Published MNIST tables, reproduced with this library: ``jaxmlp reproduce TABLE``.

A *table* is data (``tables``): its rows, each a published number and the *recipe* that reproduces it
here (a ``TrainConfig`` for ``runs.fit``, or ``NotebookRecipe``: the seed notebook's own float64 run),
with the notes on where the recipe differs from the paper and the expected time on a 2-core CPU.
``run_table`` (``runner``) trains the rows in units and batches (``plan``), skipping those already
finished in its output folder, and writes each row's result and run manifest (``jaxmlp.manifest``);
``markdown_table`` (``report``) sets paper against jaxmlp.

* ``seed``: the notebook's table (its four printed experiments, and the 256-128 one its output cut
  off), exact in float64 as ``--notebook-exact`` gives them. Rows that share a shape (hidden sizes,
  batch size) share the notebook's init and minibatch order, so they train together: one vmapped
  program over their learning rates (``notebook.fit_notebook_group``).
* ``lecun1998``, ``simard2003``, ``dropout2014``: MLPs without convolutions from LeCun et al. 1998,
  Simard, Steinkraus & Platt 2003 (ICDAR) and Srivastava et al. 2014 (JMLR), each row's error at or
  below the published one being the goal.

The modules import only downward: ``tables`` <- ``plan`` <- ``report`` <- ``runner``, all above
``notebook``, ``manifest`` and ``runs``.
"""
from __future__ import annotations

from ..notebook import fit_notebook_group
from .report import list_tables, markdown_table
from .runner import run_table
from .tables import TABLES, NotebookRecipe, Row, Table, select_rows, table_by_name

__all__ = ["NotebookRecipe", "Row", "Table", "TABLES", "fit_notebook_group", "table_by_name", "select_rows",
           "run_table", "markdown_table", "list_tables"]
