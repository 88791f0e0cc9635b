"""`aigi domains`: k-means recovers separated clusters, zero-shot with a tiny CLIP text tower, manifest/config joins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from aigi import cache
from aigi.cli import main
from aigi.pipeline.config import load_config
from aigi.pipeline.domains import PROMPTS, load_text_tower, text_embeddings
from aigi.pipeline.rows import groups_of, open_caches, train_val_rows


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_cache(path: Path, feats: np.ndarray, *, name: str, views: dict[int, str] | None = None) -> list[str]:
    """One row per feature vector (image i), plus extra rows of other views for the images in `views`."""
    ids = [_id(f"img{i}") for i in range(len(feats))]
    meta = pd.DataFrame(
        {"image_id": ids, "path": [f"{i}.png" for i in range(len(ids))], "label": 0, "source": "real", "view": "orig"}
    )
    rows = [feats]
    for i, view in (views or {}).items():
        meta = pd.concat([meta, meta.iloc[[i]].assign(view=view)], ignore_index=True)
        rows.append(-feats[[i]])  # a different vector: must not decide the image's domain
    x = np.concatenate(rows).astype(np.float32)
    with cache.CacheWriter(path, spec={"t": name}, features={name: (x.shape[1],)}, dtype="float32") as w:
        w.append(meta, {name: x})
    return ids


def test_kmeans_recovers_separated_clusters(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    sizes = [30, 20, 10]
    truth = np.repeat(np.arange(3), sizes)
    centres = np.zeros((3, 16))
    centres[0, 0], centres[1, 5], centres[2, 10] = 10.0, 10.0, 10.0
    x = centres[truth] + rng.standard_normal((len(truth), 16))
    ids = write_cache(tmp_path / "c", x, name="probe", views={0: "jpeg:75", 35: "blur:1.0"})
    out = tmp_path / "domains.parquet"
    assert main(["domains", "--cache", str(tmp_path / "c"), "--k", "3", "-o", str(out)]) == 0
    assert "k-means" in capsys.readouterr().out
    table = pd.read_parquet(out).set_index("image_id").loc[ids]
    assert len(table) == 60 and set(table["method"]) == {"kmeans:k=3"}
    # clusters are numbered by decreasing size, so here cluster i is true group i exactly
    assert table["domain"].tolist() == [f"cluster{t}" for t in truth]
    assert (table["score"] > 0.8).all()


def tiny_clip(path: Path) -> torch.nn.Module:
    """A tiny random open_clip CLIP (text width 64 -> 1 head, 2 layers), saved as a safetensors state dict."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=24,
        vision_cfg=CLIPVisionCfg(image_size=28, layers=1, width=64, patch_size=14, head_width=32),
        text_cfg=CLIPTextCfg(context_length=20, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    ).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def test_zero_shot_with_a_tiny_random_text_tower(tmp_path: Path, capsys) -> None:
    import open_clip

    model = tiny_clip(tmp_path / "clip.safetensors")
    tower = load_text_tower(tmp_path / "clip.safetensors")
    tokens = open_clip.get_tokenizer("ViT-L-14")(["a photo of a dog.", "an anime illustration."], context_length=20)
    with torch.no_grad():
        assert torch.allclose(tower(tokens), model.encode_text(tokens), atol=1e-6)
        # each domain's embedding, straight from open_clip's CLIP: mean of normalised prompt embeddings
        reference = []
        for prompts in PROMPTS.values():
            emb = model.encode_text(open_clip.tokenize(list(prompts), context_length=20), normalize=True)
            reference.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
    reference = torch.stack(reference).numpy()
    np.testing.assert_allclose(text_embeddings(tower), reference, atol=1e-5)
    truth = np.tile(np.arange(len(PROMPTS)), 4)
    rng = np.random.default_rng(0)
    feats = 3.0 * reference[truth] + 1e-4 * rng.standard_normal((len(truth), reference.shape[1]))
    ids = write_cache(tmp_path / "c", feats, name="proj")
    out = tmp_path / "d.parquet"
    argv = ["domains", "--cache", str(tmp_path / "c"), "--text-weights", str(tmp_path / "clip.safetensors")]
    assert main([*argv, "-o", str(out)]) == 0
    assert "zero-shot" in capsys.readouterr().out
    table = pd.read_parquet(out).set_index("image_id").loc[ids]
    assert table["domain"].tolist() == [list(PROMPTS)[t] for t in truth]
    assert set(table["method"]) == {"zero-shot"} and table["score"].between(0, 1).all()


def test_zero_shot_refuses_a_feature_of_another_width(tmp_path: Path) -> None:
    tiny_clip(tmp_path / "clip.safetensors")
    write_cache(tmp_path / "c", np.ones((4, 10)), name="proj")
    argv = ["domains", "--cache", str(tmp_path / "c"), "--text-weights", str(tmp_path / "clip.safetensors")]
    assert main([*argv, "-o", str(tmp_path / "d.parquet")]) == 2


def test_domains_fill_a_manifest_and_join_a_run_config(tmp_path: Path) -> None:
    x = np.concatenate([np.eye(8)[:4] * 5, -np.eye(8)[:4] * 5])
    ids = write_cache(tmp_path / "c", x + 0.01, name="probe")
    table = tmp_path / "d.parquet"
    assert main(["domains", "--cache", str(tmp_path / "c"), "--k", "2", "-o", str(table)]) == 0
    found = pd.read_parquet(table).set_index("image_id")["domain"]
    manifest = pd.DataFrame(
        {
            "image_id": [*ids, _id("other")],
            "path": [f"{i}.png" for i in range(9)],
            "label": 0,
            "source": "real",
            "domain": ["human"] + [""] * 8,
        }
    )
    cache.write_manifest(manifest, tmp_path / "m.parquet")
    argv = ["domains", "--cache", str(tmp_path / "c"), "--k", "2", "--manifest", str(tmp_path / "m.parquet")]
    assert main([*argv, "-o", str(tmp_path / "m2.parquet")]) == 0
    filled = cache.read_manifest(tmp_path / "m2.parquet")
    assert filled["domain"].tolist() == ["human", *found.loc[ids[1:]].tolist(), ""]
    assert main([*argv, "--overwrite", "-o", str(tmp_path / "m3.parquet")]) == 0
    assert cache.read_manifest(tmp_path / "m3.parquet")["domain"].tolist()[0] == found.loc[ids[0]]
    # a run config's data.domains puts the table's domains on the loaded rows
    meta = cache.open(tmp_path / "c").meta()
    assert set(meta["domain"]) == {""}
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "head": {"name": "linear", "inputs": ["probe"]},
                "data": {
                    "caches": str(tmp_path / "c"),
                    "domains": str(table),
                    "split_column": "view",
                    "train": "orig",
                    "val_fraction": 0.0,
                },
            }
        )
    )
    cfg = load_config(cfg_path)
    train, _, _ = train_val_rows(open_caches(cfg.data.caches), cfg.data, inputs=["probe"])
    got = dict(zip(train.meta["image_id"], groups_of(train)["domain"], strict=True))
    assert got == found.to_dict()


def test_missing_domains_table_is_a_clear_error(tmp_path: Path) -> None:
    write_cache(tmp_path / "c", np.ones((4, 3)), name="probe")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "head": {"name": "linear", "inputs": ["probe"]},
                "data": {"caches": str(tmp_path / "c"), "domains": "nope.parquet"},
            }
        )
    )
    cfg = load_config(cfg_path)
    with pytest.raises(FileNotFoundError, match="aigi domains"):
        train_val_rows(open_caches(cfg.data.caches), cfg.data, inputs=["probe"])
