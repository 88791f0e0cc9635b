"""An ablation worker (a `RowStore` kept for its runs) opens each cache once while its files are unchanged, and
reopens it when they change."""

from __future__ import annotations

import numpy as np
import pandas as pd

from aigi import cache
from aigi.pipeline.rows import RowStore, open_caches
from tests.pipeline.test_ablate import make_cache


def test_worker_reuses_an_opened_cache_until_its_files_change(tmp_path, monkeypatch) -> None:
    store = make_cache(tmp_path / "cache")
    opened = []
    real_open = cache.open
    monkeypatch.setattr(cache, "open", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    # a lone command opens the cache every time
    assert open_caches({"a": str(store)})["a"] is not open_caches({"a": str(store)})["a"]
    assert len(opened) == 2
    worker = RowStore()  # an ablation worker
    first = open_caches({"a": str(store)}, store=worker)["a"]
    assert open_caches({"b": str(store)}, store=worker)["b"] is first and len(opened) == 3
    n = len(first.meta())
    meta = pd.DataFrame({"image_id": ["f" * 64], "path": ["new/0"], "label": [1], "source": ["vae:x"],
                         "pair_id": [""], "view": ["orig"], "split": ["train"]})  # fmt: skip
    with cache.CacheWriter(store, spec={"synthetic": "ablate-test"}, features={"f": (8,)}, dtype="float32") as w:
        w.append(meta, {"f": np.ones((1, 8), dtype=np.float32)})
    again = open_caches({"a": str(store)}, store=worker)["a"]
    assert again is not first and len(opened) == 4 and len(again.meta()) == n + 1
