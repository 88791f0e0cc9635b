"""The domains stage: give every cached image a semantic domain (CLIP zero-shot prompts, else k-means)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigi.common.files import atomic_path

DOMAINS = ("human", "animal", "object", "scene", "anime")

# Prompt ensembles per domain (CLIP zero-shot: mean of the normalised text embeddings, renormalised).
PROMPTS: dict[str, tuple[str, ...]] = {
    "human": (
        "a photo of a person.",
        "a portrait photo of a man.",
        "a portrait photo of a woman.",
        "a photo of a group of people.",
        "a close-up photo of a human face.",
    ),
    "animal": (
        "a photo of an animal.",
        "a photo of a dog.",
        "a photo of a cat.",
        "a photo of a bird.",
        "a wildlife photo of a wild animal.",
    ),
    "object": (
        "a photo of an object.",
        "a product photo of an item on a table.",
        "a close-up photo of a tool.",
        "a photo of a vehicle.",
        "a photo of food on a plate.",
    ),
    "scene": (
        "a photo of a landscape.",
        "a photo of a city street.",
        "a photo of the inside of a room.",
        "a photo of a building.",
        "a photo of nature with mountains and sky.",
    ),
    "anime": (
        "an anime illustration.",
        "a cartoon drawing.",
        "a manga style drawing of a character.",
        "a digital painting of an anime character.",
        "a colourful 2D illustration.",
    ),
}
ZERO_SHOT_SCALE = 100.0  # CLIP's learned logit scale (exp of 4.6052): softmax temperature of the zero-shot scores


@dataclass(frozen=True)
class DomainsOptions:
    """How `write_domains` assigns domains and where it puts them (the defaults are `aigi domains`'s).

    Attributes:
        k: clusters for k-means.
        text_weights: a CLIP checkpoint with the text tower (a local file, `hf-hub:` name or the cache backbone's
            alias, e.g. `openai`); when given, zero-shot on `feature` (default proj).
        feature: the feature to use (zero-shot: default `proj`; k-means: default the cache's first feature).
        view: the view whose row represents each image.
        seed: the k-means seed.
        manifest: write the domains into a copy of this manifest instead of a domains table.
        overwrite: with `manifest`: replace non-empty domains too.
    """

    k: int = 5
    text_weights: str | Path | None = None
    feature: str | None = None
    view: str = "orig"
    seed: int = 0
    manifest: str | Path | None = None
    overwrite: bool = False


@dataclass
class DomainsResult:
    """What `write_domains` did: the domains table, a sentence saying which method made it, the file written and,
    with a manifest, its row count, the rows that matched a cached image and the rows changed."""

    table: Any
    how: str
    out: Path
    manifest_rows: int | None = None
    matched: int = 0
    changed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# features


def image_features(store: Any, *, feature: str, view: str = "orig") -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, features) with one row per image of a cache: its `view` row (else its first row), in the cache's
    row order (no copy of the features when every row is kept)."""
    if feature not in store.features:
        raise ValueError(f"{store.path}: no feature {feature!r}; the cache holds {sorted(store.features)}")
    if len(store.features[feature]) != 1:
        raise ValueError(f"{store.path}: feature {feature!r} has per-row shape {store.features[feature]}, not a vector")
    fs = store.load([feature])
    if len(fs) == 0:
        raise ValueError(f"{store.path}: the cache has no rows")
    meta = fs.meta.assign(_first=fs.meta["view"].astype(str) != view)
    order = meta.sort_values(["image_id", "_first"], kind="stable")
    keep = np.sort(order.drop_duplicates("image_id").index.to_numpy())
    x = fs.features[feature]
    return fs.meta["image_id"].astype(str).to_numpy()[keep], x if len(keep) == len(x) else x[keep]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# zero-shot


def load_text_tower(weights: str | Path, *, quick_gelu: bool = True) -> Any:
    """CLIP's text tower (an open_clip `TextTransformer`) from a local OpenAI / open_clip checkpoint.

    The architecture is read from the tensors (as open_clip does for OpenAI state dicts): vocabulary, context
    length, width, layers and output width from their shapes, heads = width // 64. Visual weights are ignored.

    Args:
        weights: .pt / .pth / .bin / .safetensors file holding the CLIP state dict (optionally wrapped).
        quick_gelu: QuickGELU activations (OpenAI's weights were trained with them).
    """
    from open_clip.model import QuickGELU
    from open_clip.transformer import TextTransformer
    from torch import nn

    from aigi.extractors.weights import read_state_dict

    state = read_state_dict(weights)
    need = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(
            f"{weights}: not a CLIP checkpoint with a text tower (missing {missing}); give the OpenAI or open_clip "
            "weights of the model the cache was extracted with (e.g. ViT-L-14)"
        )
    text = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    vocab, width = text["token_embedding.weight"].shape
    layers = len({m.group(1) for k in text if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
    tower = TextTransformer(
        context_length=text["positional_embedding"].shape[0],
        vocab_size=vocab,
        width=width,
        heads=max(1, width // 64),
        layers=layers,
        output_dim=text["text_projection"].shape[1],
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )
    tower.load_state_dict(text)
    return tower.eval()


def text_embeddings(tower: Any, prompts: Mapping[str, Sequence[str]] = PROMPTS) -> np.ndarray:
    """[n_domains, d]: per domain, the mean of its prompts' normalised text embeddings, renormalised."""
    import open_clip
    import torch

    tokenizer = open_clip.get_tokenizer("ViT-L-14")
    out = []
    with torch.inference_mode():
        for texts in prompts.values():
            tokens = tokenizer(list(texts), context_length=tower.context_length)
            out.append(_normalise(tower(tokens).float().numpy()).mean(0))
    return _normalise(np.stack(out))


def zero_shot(features: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the most similar text embedding per row, and its softmax probability at CLIP's logit scale."""
    if features.shape[1] != text.shape[1]:
        raise ValueError(
            f"the image feature has {features.shape[1]} dims but the text tower outputs {text.shape[1]}: "
            "use the cache's CLIP `proj` feature and the text weights of the same CLIP model"
        )
    logits = ZERO_SHOT_SCALE * _normalise(features) @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    index = prob.argmax(axis=1)
    return index, prob[np.arange(len(index)), index]


# ----------------------------------------------------------------------------------------------------------------
# k-means


KMEANS_SAMPLE = 20_000  # images k-means is fitted on (a seeded sample of them when there are more)
KMEANS_DIMS = 128  # principal components the clusters are found in (when the feature is wider)
PCA_ROWS = 5_000  # rows of that sample the principal components are computed from
CHUNK_ROWS = 4096  # rows normalised / projected / assigned at a time (50 MB of 3,072-d float32)


def kmeans_domains(
    features: np.ndarray, *, k: int, seed: int = 0, overwrite: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster index per row (sklearn KMeans on L2-normalised rows) and the row's cosine similarity to its centre.

    KMeans (`n_init=4`, `random_state=seed`) is fitted on a seeded sample of at most `KMEANS_SAMPLE` rows, in the
    top `KMEANS_DIMS` principal components of `PCA_ROWS` of them when the feature is wider, and every row then goes
    to its nearest centre: the time does not grow with the rows beyond one pass over them (150,000 x 3,072: 10 s,
    where a full-width fit on every row took 239 s). Clusters are numbered by decreasing size (ties: by the smallest row
    index), so names do not depend on KMeans' internal order; a centre is the normalised mean of its rows.
    `overwrite`: normalise `features` in place when they are float32 (the caller's own copy: no second one).
    """
    from sklearn.cluster import KMeans

    if not 2 <= k <= len(features):
        raise ValueError(f"--k must be between 2 and the number of images ({len(features)}), got {k}")
    x = _unit_rows(features, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    fit = rng.permutation(len(x))[:KMEANS_SAMPLE] if len(x) > KMEANS_SAMPLE else np.arange(len(x))
    fit = np.sort(fit)
    reduce, back = _reducer(x[fit[np.sort(rng.permutation(len(fit))[:PCA_ROWS])]], seed)
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(reduce(x[fit]))
    # nearest centre in the components' space == nearest of the centres mapped back, in the full space (a row's
    # distance to that affine subspace is the same for every centre): one product per block, nothing projected
    centres = back(model.cluster_centers_).astype(np.float32)
    sq = (centres.astype(np.float64) ** 2).sum(1)
    labels = np.concatenate(
        [(sq - 2 * (x[lo : lo + CHUNK_ROWS] @ centres.T)).argmin(1) for lo in range(0, len(x), CHUNK_ROWS)]
    )
    sizes = np.bincount(labels, minlength=k)
    first = np.array([np.flatnonzero(labels == c)[0] if sizes[c] else len(x) for c in range(k)])
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((first, -sizes))] = np.arange(k)
    labels = rank[labels]
    sums = np.zeros((k, x.shape[1]))
    for lo in range(0, len(x), CHUNK_ROWS):  # each cluster's sum of rows, a block at a time (no masked copies)
        part = slice(lo, lo + CHUNK_ROWS)
        sums += (np.eye(k, dtype=np.float32)[labels[part]].T @ x[part]).astype(np.float64)
    centres = _normalise(sums)
    score = np.empty(len(x))
    for lo in range(0, len(x), CHUNK_ROWS):
        part = slice(lo, lo + CHUNK_ROWS)
        score[part] = np.einsum("nd,nd->n", x[part], centres[labels[part]].astype(np.float32), dtype=np.float64)
    return labels, score


def _unit_rows(features: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """The rows L2-normalised as float32, a block at a time (no float64 copy of the whole matrix); in place when
    `overwrite` and the rows are float32 already."""
    x = np.array(features, dtype=np.float32, copy=not (overwrite and np.asarray(features).dtype == np.float32))
    for lo in range(0, len(x), CHUNK_ROWS):
        block = x[lo : lo + CHUNK_ROWS]
        norms = np.sqrt(np.einsum("nd,nd->n", block, block, dtype=np.float64))
        block /= np.maximum(norms, 1e-12).astype(np.float32)[:, None]
    return x


def _reducer(sample: np.ndarray, seed: int) -> tuple[Callable, Callable]:
    """(rows -> their coordinates on the sample's top KMEANS_DIMS principal components, coordinates -> rows of the
    full space); both the identity when the feature is no wider."""
    if sample.shape[1] <= KMEANS_DIMS or len(sample) <= KMEANS_DIMS:
        return (lambda rows: rows), (lambda coords: coords)
    from sklearn.decomposition import PCA

    pca = PCA(n_components=KMEANS_DIMS, svd_solver="randomized", random_state=seed).fit(sample)
    return (lambda rows: pca.transform(rows).astype(np.float32)), pca.inverse_transform


# ----------------------------------------------------------------------------------------------------------------
# the stage


def assign_domains(cache_path: str | Path, options: DomainsOptions = DomainsOptions()) -> tuple[Any, str]:
    """Domains of every image of a cache (any format `cache.open` reads), by `options.k`, `text_weights`,
    `feature`, `view` and `seed`.

    Returns:
        (DataFrame image_id, domain, score, method; a sentence saying which method was used).
    """
    import pandas as pd

    from aigi import cache
    from aigi.extractors.weights import resolve_weights

    store = cache.open(cache_path)
    text_weights, feature, view, k, seed = options.text_weights, options.feature, options.view, options.k, options.seed
    if text_weights is not None:
        backbone = str(store.spec.get("name") or "")
        text_weights = resolve_weights(text_weights, backbone=backbone, option="--text-weights")
        feature = feature or "proj"
        ids, x = image_features(store, feature=feature, view=view)
        index, score = zero_shot(x, text_embeddings(load_text_tower(text_weights)))
        domain = np.array(list(PROMPTS))[index]
        method = "zero-shot"
        how = f"zero-shot CLIP prompts ({', '.join(PROMPTS)}) on `{feature}` with the text tower of {text_weights}"
    else:
        feature = feature or next(iter(store.features))
        ids, x = image_features(store, feature=feature, view=view)
        index, score = kmeans_domains(x, k=k, seed=seed, overwrite=True)  # x is this call's own copy
        domain = np.array([f"cluster{i}" for i in range(k)])[index]
        method = f"kmeans:k={k}"
        reason = "no --text-weights given" if "proj" in store.features else "the cache holds no CLIP `proj`"
        how = f"k-means (k={k}, seed {seed}) on L2-normalised `{feature}` ({reason}: zero-shot needs both)"
        if len(x) > KMEANS_SAMPLE or x.shape[1] > KMEANS_DIMS:
            how += (f", fitted on {min(len(x), KMEANS_SAMPLE):,} of the {len(x):,} images in their top "
                    f"{min(x.shape[1], KMEANS_DIMS)} principal components")  # fmt: skip
    frame = pd.DataFrame({"image_id": ids, "domain": domain, "score": score.astype(np.float64), "method": method})
    return frame, how


def read_domains(path: str | Path) -> Any:
    """A domains table (Parquet or CSV with `image_id`, `domain`), one row per image_id."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"domains table {path} does not exist; write it with `aigi domains --cache C -o {path}`"
        )
    table = pd.read_csv(path, dtype=str, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = [c for c in ("image_id", "domain") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: a domains table needs columns image_id and domain (missing {missing})")
    if table["image_id"].duplicated().any():
        raise ValueError(f"{path}: image_id values repeat; a domains table has one row per image")
    return table


def attach_domains(fs: Any, path: str | Path) -> Any:
    """The same rows (a `common.rows.Rows` with meta) whose `domain` column is taken from the domains table by
    image_id ("" where it has none)."""
    table = read_domains(path)
    lookup = dict(zip(table["image_id"].astype(str), table["domain"].astype(str), strict=True))
    meta = fs.meta.copy()
    meta["domain"] = meta["image_id"].astype(str).map(lookup).fillna("").astype("string")
    return fs.with_meta(meta)


def fill_manifest(manifest: Any, domains: Any, *, overwrite: bool = False) -> tuple[Any, int]:
    """Copy of a manifest with `domain` set from the table by image_id (empty cells only, unless `overwrite`).

    Returns:
        (the manifest, the number of rows changed).
    """
    lookup = dict(zip(domains["image_id"].astype(str), domains["domain"].astype(str), strict=True))
    out = manifest.copy()
    new = out["image_id"].astype(str).map(lookup)
    current = out["domain"].astype(str)
    take = new.notna() & (overwrite | (current == ""))
    out.loc[take, "domain"] = new[take]
    return out, int((take & (current != new.fillna(""))).sum())


def _write_table(frame: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def write_domains(cache_path: str | Path, out: str | Path, options: DomainsOptions = DomainsOptions()) -> DomainsResult:
    """Assign domains to the images of a cache and write them to `out`: a domains table (image_id, domain, score,
    method), or with `options.manifest` a copy of that manifest whose `domain` cells are filled."""
    from aigi import cache
    from aigi.extractors.weights import is_weights_name

    named = options.text_weights is not None and is_weights_name(options.text_weights)
    if options.text_weights is not None and not named and not Path(options.text_weights).is_file():
        raise FileNotFoundError(f"--text-weights {options.text_weights} does not exist")
    frame, how = assign_domains(cache_path, options)
    out = Path(out)
    if options.manifest is None:
        _write_table(frame, out)
        return DomainsResult(frame, how, out)
    manifest = cache.read_manifest(options.manifest)
    filled, changed = fill_manifest(manifest, frame, overwrite=options.overwrite)
    cache.write_manifest(filled, out)
    matched = int(manifest["image_id"].astype(str).isin(set(frame["image_id"])).sum())
    return DomainsResult(frame, how, out, manifest_rows=len(manifest), matched=matched, changed=changed)
