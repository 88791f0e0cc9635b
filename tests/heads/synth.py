"""Synthetic feature sets for head tests: two fake types detectable in different feature subspaces."""

from __future__ import annotations

import numpy as np

DOMAINS = ("human", "animal", "scene")


def make_set(n: int = 600, d: int = 16, *, seed: int = 0, shift: float = 2.5) -> dict:
    """Rows of two same-width features "a" (a layer) and "b" (a noisier later layer).

    Generator: real rows ~ N(0, I). Fake rows of source `vae:x` add `shift` to dims 0-2, fake rows of `sr:y` add
    `shift` to dims 3-5 (each fake type lives in its own subspace). Each row has a semantic domain (human / animal /
    scene, 10% unknown "") that adds 3 to dim 8 + domain index, whatever the label.
    """
    rng = np.random.default_rng(seed)
    source = rng.choice(np.array(["real", "vae:x", "sr:y"]), size=n, p=[0.5, 0.25, 0.25])
    domain = rng.choice(np.array([*DOMAINS, ""]), size=n, p=[0.3, 0.3, 0.3, 0.1])
    a = rng.standard_normal((n, d)).astype(np.float32)
    a[source == "vae:x", 0:3] += shift
    a[source == "sr:y", 3:6] += shift
    for i, dom in enumerate(DOMAINS):
        a[domain == dom, 8 + i] += 3.0
    b = (a + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return {
        "X": {"a": a, "b": b},
        "y": (source != "real").astype(np.int64),
        "groups": {"source": source, "domain": domain},
    }
