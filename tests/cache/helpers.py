"""Small synthetic rows and features for cache tests."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPEC = {"backbone": "tiny", "weights_sha256": "ab" * 32, "input_size": 224, "layers": [3, 5], "dtype": "float32"}
FEATURES = {"l3.cls": (8,), "l5.tokens": (3, 4)}


def rows(n: int, *, seed: int = 0, start: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """`n` manifest rows (ids start..start+n-1) and random float32 features of FEATURES' shapes."""
    rng = np.random.default_rng(seed + start)
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + n)]
    meta = pd.DataFrame(
        {
            "image_id": ids,
            "path": [f"gen{i % 3}/img_{i}.png" for i in range(start, start + n)],
            "label": [i % 2 for i in range(start, start + n)],
            "source": [f"gen{i % 3}" for i in range(start, start + n)],
            "split": ["train" if i % 4 else "test" for i in range(start, start + n)],
            "width": [32 + i for i in range(start, start + n)],
        }
    )
    feats = {name: (rng.standard_normal((n, *shape)) * 3).astype(np.float32) for name, shape in FEATURES.items()}
    return meta, feats


def as_stored(arr: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """What a cache of `dtype` must give back for float32 input: the exact float16 cast, widened to float32."""
    return arr.astype(dtype).astype(np.float32)
