"""`aigi predict RUN --cache PATH`: scores of cached rows, streamed or in memory, equal to heads.predict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aigi import cache, heads
from aigi.cli import main
from tests.heads.test_stream_fit import write_cache


def test_cached_rows_score_the_same_streamed_or_in_memory(tmp_path, capsys) -> None:
    path = write_cache(tmp_path / "c", 4000, 16, shard_size=900)
    store = cache.open(path)
    test = store.load(["x"], where={"split": "test"})
    head = heads.build("linear", inputs="x", in_dim=16, standardize=True)
    heads.fit(head, test.features, test.labels, cfg=heads.FitConfig(epochs=2))
    heads.save(head, tmp_path / "run")
    want = heads.predict(head, test.features)
    for stream, mode in (("true", "streamed from disk"), ("false", "in memory as float32"), ("auto", "streamed")):
        out = tmp_path / f"{stream}.csv"
        argv = ["predict", str(tmp_path / "run"), "--cache", str(path), "--where", "split=test", "-o", str(out)]
        assert main([*argv, "--stream", stream, "--memory-budget", "20KB" if stream == "auto" else "1GB"]) == 0
        err = capsys.readouterr().err
        assert f"data: {len(test):,} rows {mode}" in err and f"{len(test):,} cached row(s) scored" in err
        got = pd.read_csv(out, keep_default_na=False)
        assert got["image_id"].astype(str).str.zfill(8).tolist() == test.meta["image_id"].tolist()
        np.testing.assert_allclose(got["p_fake"].to_numpy(), want, rtol=1e-6)


def test_nothing_to_score_is_one_line(tmp_path, capsys) -> None:
    head = heads.build("linear", inputs="x", in_dim=4)
    heads.save(head, tmp_path / "run")
    assert main(["predict", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == (
        "aigi predict: error: give image files/folders to score, or --cache PATH to score cached features"
    )
