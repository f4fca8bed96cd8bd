"""The CNN's cells of tests/test_roundtrip.py (a module of their own so that the test workers share the
compile-heavy cells): trained with --save, then eval, predict, the plots, sweep and an ensemble member
report the accuracy training reported, in float32 and in bfloat16 (mixed precision, the CNN's own cast
path). A float64 checkpoint's round trip is the MLP's cells' (the same saving and loading code), and the
float64 CNN itself is tests/test_cnn.py's."""
from __future__ import annotations

import pytest
from test_cli import write_dataset
from test_roundtrip import round_trip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), n_train=128, n_test=96)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_consumer_scores_what_the_cnn_reported(dtype, tmp_path, data_dir, monkeypatch):
    round_trip(("cnn", None, dtype), tmp_path, data_dir, monkeypatch)
