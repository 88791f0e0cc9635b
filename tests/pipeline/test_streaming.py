"""The memory budget, the in-memory / float16 / streamed choice, streamed sets and progress lines."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from aigi import cache
from aigi.cache.stream import open_stream
from aigi.pipeline import rows as streaming
from aigi.pipeline.rows import choose, parse_budget
from tests.heads.test_stream_fit import write_cache


def test_budget_forms(monkeypatch) -> None:
    assert parse_budget("1.5GB") == 1_500_000_000
    assert parse_budget("800 MiB") == 800 * 2**20
    assert parse_budget(123456) == 123456
    assert streaming.available_ram() > 0
    monkeypatch.setattr(streaming, "available_ram", lambda: 3_000_000_001)  # RAM in use moves between two reads
    assert parse_budget(None) == parse_budget("auto") == 1_500_000_000
    for bad in ("lots", "-1GB", 0, "1.5 parsecs"):
        with pytest.raises(ValueError, match="memory_budget"):
            parse_budget(bad)


def test_choice_by_hand() -> None:
    # 1,000 rows x 1,000 values: float32 4 MB, float16 2 MB
    assert choose(rows=1000, row_values=1000, stored="float16", stream="auto", budget=4_000_000).mode == "float32"
    assert choose(rows=1000, row_values=1000, stored="float16", stream="auto", budget=3_000_000).mode == "float16"
    assert choose(rows=1000, row_values=1000, stored="float32", stream="auto", budget=3_000_000).mode == "stream"
    assert choose(rows=1000, row_values=1000, stored="float16", stream="auto", budget=1_000_000).mode == "stream"
    assert choose(rows=10, row_values=10, stored="float32", stream=True, budget=10**9).mode == "stream"
    forced = choose(rows=1000, row_values=1000, stored="float16", stream="false", budget=1_000_000)
    assert forced.mode == "float16" and "float32 copy 4.00 MB, memory budget 1.00 MB" in forced.why
    with pytest.raises(ValueError, match="data.stream"):
        choose(rows=1, row_values=1, stored="float32", stream="sometimes", budget=1)


def test_streamed_set_subset_meta_and_progress(tmp_path) -> None:
    store = cache.open(write_cache(tmp_path / "c", 3000, 8, shard_size=700))
    fs = open_stream(store, ["x"], {"split": "train"})
    ref = store.load(["x"], where={"split": "train"})
    assert len(fs) == len(ref) and fs.dims == {"x": (8,)}
    np.testing.assert_array_equal(fs.labels, ref.labels)
    meta = fs.meta.assign(domain=np.where(fs.labels == 1, "d1", "d0"))
    with_domain = fs.with_meta(meta)  # what attach_domains uses
    half = with_domain.subset(np.arange(len(fs)) % 2 == 1)
    np.testing.assert_array_equal(half.column("domain"), meta["domain"].to_numpy()[1::2])
    np.testing.assert_array_equal(half.load("float32")["x"], ref.features["x"][1::2])
    every = with_domain.subset(np.ones(len(fs), dtype=bool))  # every row in order: the same stream, no copy
    assert every is with_domain and every.meta is with_domain.meta
    np.testing.assert_array_equal(every.column("domain"), meta["domain"].to_numpy())
    backwards = with_domain.subset(np.arange(len(fs))[::-1])  # a subset keeps stream order
    np.testing.assert_array_equal(backwards.column("domain"), meta["domain"].to_numpy())
    out = io.StringIO()
    handler, log = logging.StreamHandler(out), logging.getLogger("aigi.progress")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        seen = sum(len(p) for _, p in half.batches(100))  # a stream reports its passes as progress lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert seen == len(half)
    line = out.getvalue().strip().splitlines()[-1]
    assert line.startswith(f"stream: {len(half):,}/{len(half):,} rows in ") and "rows/s" in line and "GB/s" in line
