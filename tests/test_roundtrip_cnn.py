"""The CNN's cells of tests/test_roundtrip.py (a module of their own so that the test workers share the
compile-heavy cells): trained with --save, then eval, predict, the plots, sweep and an ensemble member
report the accuracy training reported, in every dtype the command line accepts."""
from __future__ import annotations

import pytest
from test_cli import write_dataset
from test_roundtrip import round_trip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_train=128, n_test=96)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_every_consumer_scores_what_the_cnn_reported(dtype, tmp_path, data_dir, monkeypatch):
    round_trip(("cnn", None, dtype), tmp_path, data_dir, monkeypatch)
