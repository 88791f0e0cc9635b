"""Inputs are checked where they enter: run configs (YAML depth, aliases, repeated keys, values the fit cannot take),
released tensor files, `.npy` imports (forged headers, FIFOs, values beyond the stored dtype), LoRA sizes, aliased
options and the Python API's arrays. Each case ends in one line, never a hang, a traceback or a silently wrong answer
(issue 28, cases 11-15)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import aigi
from aigi import cache
from tests.pipeline.test_cli_errors import cli, uar_folder, user_error
from tests.pipeline.test_train_eval import make_cache, write_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("inputs")
    store = make_cache(tmp / "cache", ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    cfg = write_config(tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)}, epochs=1)
    return {"cache": store, "config": cfg, "tmp": tmp}


# ------------------------------------------------------------------------------------------ released tensor files


def test_sparse_tensors_in_a_released_probe_are_refused(tmp_path, capsys):
    torch.save({"weight": torch.randn(1, 8).to_sparse(), "bias": torch.zeros(1)}, tmp_path / "probe.pth")
    user_error(capsys, "head", "import-linear", tmp_path / "probe.pth", "--feature", "f", "-o", tmp_path / "h",
               words=("probe.pth", "sparse", "to_dense"))  # fmt: skip
    torch.save(torch.randn(16, 8).to_sparse(), tmp_path / "stage1.pt")
    torch.save(torch.randn(8, 16), tmp_path / "protos.pt")
    user_error(capsys, "head", "import-gapl", "--stage1", tmp_path / "stage1.pt", "--prototypes",
               tmp_path / "protos.pt", "-o", tmp_path / "g", words=("stage1.pt", "sparse"))  # fmt: skip
    assert not (tmp_path / "h").exists() and not (tmp_path / "g").exists()


def test_random_bytes_are_a_damaged_file_not_pickled_code(tmp_path, capsys):
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    line = user_error(capsys, "head", "import-uar", tmp_path / "noise.pth", "-o", tmp_path / "h",
                      words=("noise.pth", "damaged"))  # fmt: skip
    assert "pickle" not in line
    from aigi.extractors.weights import read_state_dict

    with pytest.raises(ValueError, match="not a weights file") as err:
        read_state_dict(tmp_path / "noise.pth")
    assert "pickle" not in str(err.value)


# ------------------------------------------------------------------------------------------ run configs


def config_with(syn: dict, path: Path, tail: str) -> Path:
    path.write_text(syn["config"].read_text() + tail, encoding="utf-8")
    return path


BOMB = "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9) if i else ', '.join(['a'] * 9)}]\n" for i in range(9))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("tail", "words"),
    [
        ("description: " + "[" * 100_000 + "]" * 100_000 + "\n", ("nested deeper",)),
        ("description: one\ndescription: two\n", ("'description' is given twice",)),
    ],
    ids=["nested-100k", "duplicate-key"],
)
def test_yaml_nesting_and_repeated_keys_are_refused(syn, tmp_path, capsys, tail, words):
    user_error(capsys, "train", config_with(syn, tmp_path / "c.yaml", tail), "-o", tmp_path / "run", words=words)
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["description", "data.where.view"])
def test_a_yaml_alias_bomb_is_refused_before_it_expands(syn, tmp_path, capsys, where):
    data = yaml.safe_load(syn["config"].read_text())
    text = yaml.safe_dump(data) if where == "description" else yaml.safe_dump({**data, "data": {**data["data"]}})
    if where == "description":
        text = BOMB + text + "description: *x8\n"
    else:
        text = BOMB + text.replace("view: orig", "view: *x8")
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    user_error(capsys, "train", path, "-o", tmp_path / "run", words=("expands to more than",))


@pytest.mark.timeout(60)
def test_a_yaml_alias_bomb_in_a_set_value_is_refused(syn, tmp_path, capsys):
    value = "[" + BOMB.replace("\n", ", ").replace(": ", ": ").rstrip(", ") + "]"
    code, out, err = cli(capsys, "train", syn["config"], "--set", f"description={{{value[1:-1]}, y: *x8}}", "-o",
                         tmp_path / "run")  # fmt: skip
    assert code == 2 and "Traceback" not in err and "expands to more than" in err


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("fit.lr=1e300", ("fit.lr", "1e+300")),
        ("fit.lr=.inf", ("fit.lr", "finite")),
        ("fit.lr=.nan", ("lr",)),
        ("fit.seed=1e30", ("fit.seed", "4294967295")),
        ("fit.epochs=1e30", ("fit.epochs", "out of range")),
        ("head.in_dim=5", ("in_dim=5", "8")),
        ("fit.weight_decay=.inf", ("fit.weight_decay", "finite")),
    ],
)
def test_set_values_the_fit_cannot_take_are_refused(syn, tmp_path, capsys, override, words):
    line = user_error(capsys, "train", syn["config"], "--set", override, "-o", tmp_path / "run", words=words)
    assert "Overflow" not in line and "negative elements" not in line
    assert not (tmp_path / "run").exists()


def test_weights_naming_an_alias_the_run_lacks_says_so(syn, tmp_path, capsys):
    (tmp_path / "w.pth").write_bytes(b"")
    line = user_error(capsys, "train", syn["config"], "--weights", f"zz={tmp_path / 'w.pth'}", "-o", tmp_path / "run",
                      words=("zz", "syn"))  # fmt: skip
    assert "not found" not in line


# ------------------------------------------------------------------------------------------ LoRA sizes


@pytest.mark.timeout(60)
def test_a_lora_rank_beyond_the_layer_width_is_refused_at_once():
    from aigi import heads
    from aigi.extractors.tail import VitTail
    from aigi.heads._lora import check_adapter_size
    from tests.heads.test_tail import _vit

    tail = VitTail(_vit(), 1, proj=False)
    with pytest.raises(ValueError, match=r"rank 100000 exceeds the width 32 .* set head.rank to at most 32"):
        heads.build("tail_lora", frozen=tail, inputs=["l0.tokens"], rank=100_000)
    with pytest.raises(ValueError, match=r"GB .* of memory available; lower head.rank or the number of experts"):
        check_adapter_size({"b0_q": (768, 768, False)}, rank=768, experts=10**6)


# ------------------------------------------------------------------------------------------ .npy imports


def forged_header(path: Path, shape: tuple[int, ...]) -> None:
    """Rewrite an `.npy` header to claim `shape`, keeping the data bytes."""
    raw = path.read_bytes()
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header = header + " " * (118 - len(header)) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + raw[128:])


@pytest.mark.timeout(60)
def test_an_npy_header_claiming_a_huge_shape_is_skipped_and_named(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=3)
    forged_header(tmp_path / "npy" / "0_real" / "000.npy", (1, 100_000_000_000))
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c")
    assert code == 0 and "Traceback" not in err, err
    assert "000.npy" in err and "(1, 100000000000)" in err and "MemoryError" not in err
    assert len(cache.open(tmp_path / "c")) == 5


def test_a_truncated_npy_is_named_truncated_not_pickled(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=3)
    short = tmp_path / "npy" / "1_fake" / "001.npy"
    short.write_bytes(short.read_bytes()[:-10])
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c")
    assert code == 0 and "001.npy" in err and "truncated" in err and "pickle" not in err


@pytest.mark.timeout(60)
def test_a_fifo_named_npy_does_not_block_the_import(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=3)
    os.mkfifo(tmp_path / "npy" / "0_real" / "000.npy.tmp")
    os.mkfifo(tmp_path / "npy" / "0_real" / "zzz.npy")
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c")
    assert code == 0 and "zzz.npy" in err and "not a regular file" in err
    assert len(cache.open(tmp_path / "c")) == 6


def test_a_value_beyond_float16_skips_that_file_only(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=3)
    np.save(tmp_path / "npy" / "1_fake" / "002.npy", np.full((1, 8), 1e6, np.float32))
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c", "--dtype", "float16")
    assert code == 0 and "002.npy" in err and "float16" in err and "float32" in err, err
    assert len(cache.open(tmp_path / "c")) == 5


@pytest.mark.timeout(60)
def test_a_folder_link_loop_does_not_hang_the_scan(tmp_path, capsys):
    uar_folder(tmp_path / "npy" / "gen", n=2)
    (tmp_path / "npy" / "gen" / "loop").symlink_to(tmp_path / "npy")
    (tmp_path / "npy" / "gen" / "loop2").symlink_to(tmp_path / "npy")
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c")
    assert code == 0, err
    assert len(cache.open(tmp_path / "c")) == 4


# ------------------------------------------------------------------------------------------ the Python API


def test_api_predict_refuses_a_single_row_given_as_a_vector():
    head = aigi.build_head("linear", inputs=["probe"], in_dim=3072)
    with pytest.raises(ValueError, match=r"shape \(3072,\).*reshape\(1, -1\)"):
        aigi.predict(head, np.zeros(3072, np.float32))
    with pytest.raises(ValueError, match=r"X\['probe'\] has shape \(2, 5\)"):
        aigi.predict(head, {"probe": np.zeros((2, 5), np.float32)})
    with pytest.raises(ValueError, match="NaN/inf in 1 row"):
        aigi.predict(head, np.stack([np.zeros(3072), np.full(3072, np.inf)]).astype(np.float32))
    assert aigi.predict(head, np.zeros((1, 3072), np.float32)).shape == (1,)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 2, 0, 2], [0.1, 0.9, 0.2, 0.8], r"labels must be 0 \(real\) or 1 \(fake\); got also \[2\]"),
        ([0, 1], [-0.3, 1.5], r"scores must be P\(fake\) in \[0, 1\].*-0.3 to 1.5"),
        ([0, 1], [np.nan, 0.5], "NaN/inf in 1 row"),
        ([0, 1, 1], [0.1, 0.9], "one length"),
    ],
)
def test_api_evaluate_refuses_labels_and_scores_it_cannot_measure(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        aigi.evaluate(labels, scores)
    assert aigi.evaluate([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])["acc"] == 1.0
