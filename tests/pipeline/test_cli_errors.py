"""Bad input through the real `aigi` command line: each case ends with one line naming the problem and the fix,
exit code 2 (130 when interrupted), no traceback, nothing half-written left.

Set AIGI_CLI_ERROR_TABLE=FILE to write every case's message line to FILE (JSON) for the documentation.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from aigi import cache
from aigi.cli import main
from tests.pipeline.test_extract import extract_args, make_manifest, weights  # noqa: F401
from tests.pipeline.test_predict import trained as predict_run  # noqa: F401
from tests.pipeline.test_train_eval import make_cache, write_config

ROOT = Path(__file__).resolve().parents[2]
CASES: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _error_table():
    yield
    target = os.environ.get("AIGI_CLI_ERROR_TABLE")
    if target:
        Path(target).write_text(json.dumps(CASES, indent=1, ensure_ascii=False), encoding="utf-8")


def _case() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]


def record(line: str) -> None:
    key, n = _case(), 2
    while key in CASES:
        key, n = f"{_case()} ({n})", n + 1
    CASES[key] = line


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys: pytest.CaptureFixture, *argv: object, words: tuple[str, ...] = ()) -> str:
    """Run `aigi ARGV`; assert exit 2, no traceback and exactly one `aigi CMD: error: ...` line holding `words`."""
    code, out, err = cli(capsys, *argv)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("aigi ")]
    assert code == 2, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"aigi {argv[0]}: error: "), line
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    record(line)
    return line


def subprocess_cli(*argv: object, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIGI_DEBUG": ""}
    env.pop("AIGI_DEBUG")
    return subprocess.Popen(
        [sys.executable, "-m", "aigi", *map(str, argv)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def photo(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    """A file whose unpickling would create `marker` (code execution)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({"weight": Evil()}, fh, protocol=2)
    return path


def uar_folder(root: Path, *, n: int = 20, dim: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        for label, name in enumerate(("0_real", "1_fake")):
            path = root / name / f"{i:03d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, (rng.standard_normal((1, dim)) + 1.5 * label).astype(np.float32))
    return root


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------------ aigi index


def test_index_missing_folder(tmp_path, capsys):
    user_error(capsys, "index", tmp_path / "nope", "-o", tmp_path / "m.parquet", words=("does not exist",))
    assert not (tmp_path / "m.parquet").exists()


def test_index_root_is_a_file(tmp_path, capsys):
    file = photo(tmp_path / "one.png", 0)
    user_error(capsys, "index", file, "-o", tmp_path / "m.parquet", words=("is a file", "folder"))


def test_index_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    user_error(capsys, "index", tmp_path / "empty", "-o", tmp_path / "m.parquet", words=("no files",))
    assert not (tmp_path / "m.parquet").exists()


def test_index_folder_of_unreadable_files_names_the_first_reasons(tmp_path, capsys):
    root = tmp_path / "bad"
    (root / "real").mkdir(parents=True)
    (root / "real" / "notes.txt").write_text("not an image")
    (root / "real" / "empty.png").write_bytes(b"")
    line = user_error(capsys, "index", root, "-o", tmp_path / "m.parquet", words=("readable image", "empty.png"))
    assert "notes.txt" in line
    assert not (tmp_path / "m.parquet").exists()


def test_index_plain_folder_of_photos_indexes_reals(tmp_path, capsys):
    for i in range(3):
        photo(tmp_path / "photos" / f"p{i}.png", i)
    photo(tmp_path / "photos" / "trip" / "q.png", 9)
    code, out, err = cli(capsys, "index", tmp_path / "photos", "-o", tmp_path / "photos" / "manifest.parquet")
    assert code == 0, err
    m = cache.read_manifest(tmp_path / "photos" / "manifest.parquet")
    assert sorted(m["path"]) == ["p0.png", "p1.png", "p2.png", "trip/q.png"]
    assert (m["label"] == 0).all() and (m["source"] == "photos").all()
    assert "as real" in out + err


def test_manifest_written_outside_the_image_folder_resolves_its_paths(tmp_path, capsys, weights):  # noqa: F811
    from tests.pipeline.test_fakes_sr import compact, save_weights

    root = tmp_path / "data" / "root"
    for i in range(3):
        photo(root / "real" / f"r{i}.png", i, size=(24, 16))
    out = tmp_path / "out" / "m.parquet"
    code, _, err = cli(capsys, "index", root, "-o", out)
    assert code == 0, err
    m = cache.read_manifest(out)
    assert all((out.parent / p).is_file() for p in m["path"])  # relative to the manifest's folder
    # the next stages read it from anywhere
    sr = save_weights(compact(2), tmp_path / "w" / "sr.pth")
    code, _, err = cli(capsys, "fakes", "sr", "--manifest", out, "--weights", sr, "--out", tmp_path / "fakes",
                       "--device", "cpu")  # fmt: skip
    assert code == 0, err
    m = cache.read_manifest(out)
    assert (m["label"] == 1).sum() == 3 and all((out.parent / p).is_file() for p in m["path"])
    code, _, err = cli(capsys, *extract_args(out, tmp_path / "cache", weights))
    assert code == 0, err
    assert len(cache.open(tmp_path / "cache")) == 6


def test_index_csv_path_outside_the_root_is_refused(tmp_path, capsys):
    photo(tmp_path / "outside" / "img.png", 1)
    root = tmp_path / "a" / "b"
    photo(root / "in.png", 2)
    csv = root / "list.csv"
    csv.write_text("path,label\nin.png,0\n../../outside/img.png,1\n")
    user_error(
        capsys, "index", root, "--csv", csv, "-o", tmp_path / "m.parquet",
        words=("outside", "../../outside/img.png", "--allow-outside-root"),
    )  # fmt: skip
    assert not (tmp_path / "m.parquet").exists()
    code, _, err = cli(capsys, "index", root, "--csv", csv, "-o", tmp_path / "m.parquet", "--allow-outside-root")
    assert code == 0, err
    assert len(cache.read_manifest(tmp_path / "m.parquet")) == 2


def test_index_symlink_out_of_the_root_is_refused(tmp_path, capsys):
    secret = photo(tmp_path / "private" / "secret.png", 3)
    root = tmp_path / "set"
    photo(root / "real" / "a.png", 4)
    (root / "real" / "link.png").symlink_to(secret)
    user_error(capsys, "index", root, "-o", tmp_path / "m.parquet", words=("link.png", "--allow-outside-root"))
    assert not (tmp_path / "m.parquet").exists()
    code, _, err = cli(capsys, "index", root, "-o", tmp_path / "m.parquet", "--allow-outside-root")
    assert code == 0, err


def test_index_file_name_with_invalid_utf8_is_skipped_and_named(tmp_path, capsys):
    root = tmp_path / "set"
    photo(root / "real" / "good.png", 5)
    bad = os.fsdecode(bytes(root / "real") + b"/caf\xe9.png")
    photo(Path(bad), 6)
    code, out, err = cli(capsys, "index", root, "-o", tmp_path / "m.parquet")
    assert code == 0, err
    assert "Traceback" not in err
    assert "caf\\xe9.png" in err and "UTF-8" in err
    assert cache.read_manifest(tmp_path / "m.parquet")["path"].tolist() == ["set/real/good.png"]


def test_index_csv_that_is_not_a_csv(tmp_path, capsys):
    photo(tmp_path / "root" / "a.png", 0)
    (tmp_path / "list.csv").write_bytes(b"\x00\xff\x00binary")
    user_error(capsys, "index", tmp_path / "root", "--csv", tmp_path / "list.csv", "-o", tmp_path / "m.parquet",
               words=("list.csv", "path", "label"))  # fmt: skip


# ------------------------------------------------------------------------------------------------ aigi fakes


@pytest.fixture
def reals(tmp_path: Path) -> Path:
    photo(tmp_path / "set" / "real" / "a.png", 0)
    photo(tmp_path / "set" / "real" / "b.png", 1)
    assert main(["index", str(tmp_path / "set"), "-o", str(tmp_path / "set" / "manifest.parquet")]) == 0
    return tmp_path / "set" / "manifest.parquet"


def test_fakes_vae_weights_that_are_not_a_vae(tmp_path, capsys, reals):
    stage1 = tmp_path / "stage1.pt"
    torch.save(torch.randn(128, 16), stage1)
    user_error(capsys, "fakes", "vae", "--manifest", reals, "--weights", stage1, "--out", tmp_path / "f",
               words=("stage1.pt", "VAE"))  # fmt: skip
    assert not (tmp_path / "f").exists()


def test_fakes_vae_state_dict_of_another_model(tmp_path, capsys, reals):
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(2)}, other)
    user_error(capsys, "fakes", "vae", "--manifest", reals, "--weights", other, "--out", tmp_path / "f",
               words=("resnet.pth", "AutoencoderKL"))  # fmt: skip


def test_fakes_sr_weights_folder(tmp_path, capsys, reals):
    folder = tmp_path / "sr_models"
    folder.mkdir()
    torch.save({"x": torch.zeros(1)}, folder / "RealESRGAN_x4plus.pth")
    line = user_error(capsys, "fakes", "sr", "--manifest", reals, "--weights", folder, "--out", tmp_path / "f",
                      words=("is a folder", "RealESRGAN_x4plus.pth"))  # fmt: skip
    assert "does not exist" not in line


@pytest.mark.parametrize("kind", ["vae", "sr"])
def test_fakes_pickled_code_is_refused(tmp_path, capsys, reals, kind):
    marker = tmp_path / "code_ran"
    evil = evil_pickle(tmp_path / "evil.pth", marker)
    user_error(capsys, "fakes", kind, "--manifest", reals, "--weights", evil, "--out", tmp_path / "f",
               words=("evil.pth", "state dict"))  # fmt: skip
    assert not marker.exists()


def test_fakes_manifest_that_is_not_parquet(tmp_path, capsys):
    from tests.pipeline.test_fakes_sr import compact, save_weights

    bad = tmp_path / "manifest.parquet"
    bad.write_text("path,label\na.png,0\n")
    sr = save_weights(compact(2), tmp_path / "sr.pth")
    user_error(capsys, "fakes", "sr", "--manifest", bad, "--weights", sr, "--out", tmp_path / "f",
               words=("manifest.parquet", "aigi index"))  # fmt: skip


def test_fakes_every_real_unreadable_exits_non_zero(tmp_path, capsys, reals):
    from tests.pipeline.test_fakes_sr import compact, save_weights

    for name in ("a.png", "b.png"):
        (reals.parent / "real" / name).write_bytes(b"broken")
    before = reals.read_bytes()
    sr = save_weights(compact(2), tmp_path / "sr.pth")
    user_error(capsys, "fakes", "sr", "--manifest", reals, "--weights", sr, "--out", tmp_path / "f", "--device", "cpu",
               words=("every", "real/a.png"))  # fmt: skip
    assert reals.read_bytes() == before  # the manifest is untouched


# ------------------------------------------------------------------------------------------------ aigi predict


def test_predict_head_trained_on_imported_features(tmp_path, capsys):
    uar_folder(tmp_path / "npy")
    assert main(["import", "uar", str(tmp_path / "npy"), "--cache", str(tmp_path / "c"), "--split", "train"]) == 0
    cfg = write_config(tmp_path / "run.yaml", head={"name": "linear", "inputs": ["probe"]},
                       caches={"uar": str(tmp_path / "c")}, epochs=1)  # fmt: skip
    assert main(["train", str(cfg), "-o", str(tmp_path / "run")]) == 0
    img = photo(tmp_path / "x.png", 0)
    user_error(capsys, "predict", tmp_path / "run", img, words=("imported", "aigi extract"))


def test_predict_output_is_a_folder(tmp_path, capsys, predict_run, weights):  # noqa: F811
    root, run = predict_run
    (tmp_path / "out").mkdir()
    user_error(capsys, "predict", run, root / "img", "--weights", weights, "-o", tmp_path / "out",
               words=("is a folder", "scores.csv"))  # fmt: skip
    assert list((tmp_path / "out").iterdir()) == []


def test_predict_output_json_is_json(tmp_path, capsys, predict_run, weights):  # noqa: F811
    root, run = predict_run
    code, _, err = cli(capsys, "predict", run, root / "img", "--weights", weights, "-o", tmp_path / "scores.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "scores.json").read_text())
    assert len(rows) == 12 and {"path", "p_fake", "error"} <= set(rows[0])


def test_predict_output_of_unknown_kind(tmp_path, capsys, predict_run, weights):  # noqa: F811
    root, run = predict_run
    user_error(capsys, "predict", run, root / "img", "--weights", weights, "-o", tmp_path / "scores.xlsx",
               words=("scores.xlsx", ".csv", ".json"))  # fmt: skip


def test_predict_every_image_unreadable(tmp_path, capsys, predict_run, weights):  # noqa: F811
    _, run = predict_run
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"")
    (tmp_path / "bad" / "b.jpg").write_text("text")
    code, out, err = cli(capsys, "predict", run, tmp_path / "bad", "--weights", weights, "-o", tmp_path / "s.csv")
    assert code == 2 and "Empty DataFrame" not in out + err and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("aigi ")][-1]
    assert line.startswith("aigi predict: error: ") and "a.png" in line and "2 image" in line
    record(line)
    assert not (tmp_path / "s.csv").exists()


def test_predict_invalid_utf8_file_name_is_scored(tmp_path, capsys, predict_run, weights):  # noqa: F811
    _, run = predict_run
    folder = tmp_path / "imgs"
    photo(folder / "ok.png", 1, size=(60, 50))
    photo(Path(os.fsdecode(bytes(folder) + b"/caf\xe9.png")), 2, size=(60, 50))
    code, out, err = cli(capsys, "predict", run, folder, "--weights", weights)
    assert code == 0, err
    assert "caf\\xe9.png" in out and "2 image(s) scored" in err
    code, out, err = cli(capsys, "predict", run, folder, "--weights", weights, "-o", tmp_path / "s.csv")
    assert code == 0 and "2 image(s) scored" in err, err
    assert len(pd.read_csv(tmp_path / "s.csv")) == 2


def test_predict_not_a_head_folder(tmp_path, capsys):
    photo(tmp_path / "x.png", 0)
    (tmp_path / "run").mkdir()
    user_error(capsys, "predict", tmp_path / "run", tmp_path / "x.png", words=("head.json", "aigi train"))


def test_predict_untrained_imported_gapl_head(tmp_path, capsys):
    torch.save(torch.randn(16, 8), tmp_path / "stage1.pt")
    torch.save(torch.randn(8, 16), tmp_path / "protos.pt")
    assert main(["head", "import-gapl", "--stage1", str(tmp_path / "stage1.pt"), "--prototypes",
                 str(tmp_path / "protos.pt"), "-o", str(tmp_path / "gapl")]) == 0  # fmt: skip
    photo(tmp_path / "x.png", 0)
    user_error(capsys, "predict", tmp_path / "gapl", tmp_path / "x.png", words=("untrained", "stage 2"))


# ------------------------------------------------------------------------------------------------ aigi head / cache


def test_head_import_uar_pickled_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = evil_pickle(tmp_path / "epoch_0_model.pth", marker)
    user_error(capsys, "head", "import-uar", evil, "-o", tmp_path / "h", words=("epoch_0_model.pth", "pickle"))
    assert not marker.exists() and not (tmp_path / "h").exists()


def test_head_import_uar_folder_instead_of_file(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    user_error(capsys, "head", "import-uar", tmp_path / "ckpt", "-o", tmp_path / "h", words=("is a folder", ".pth"))


def test_head_info_corrupt_head_json(tmp_path, capsys):
    torch.save(torch.randn(1, 8), tmp_path / "w.pth")
    torch.save({"linear.weight": torch.randn(1, 8), "linear.bias": torch.zeros(1)}, tmp_path / "uar.pth")
    assert main(["head", "import-uar", str(tmp_path / "uar.pth"), "-o", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    (tmp_path / "h" / "head.json").write_text('{"format": "aigi-head", "version": 1')
    user_error(capsys, "head", "info", tmp_path / "h", words=("head.json", "not valid JSON"))
    (tmp_path / "h" / "head.json").write_text('{"format": "aigi-head", "version": 1}')
    user_error(capsys, "head", "info", tmp_path / "h", words=("head.json", "name"))


def test_head_info_truncated_weights(tmp_path, capsys):
    torch.save({"linear.weight": torch.randn(1, 8), "linear.bias": torch.zeros(1)}, tmp_path / "uar.pth")
    assert main(["head", "import-uar", str(tmp_path / "uar.pth"), "-o", str(tmp_path / "h")]) == 0
    capsys.readouterr()
    data = (tmp_path / "h" / "head.safetensors").read_bytes()
    (tmp_path / "h" / "head.safetensors").write_bytes(data[: len(data) // 2])
    user_error(capsys, "head", "info", tmp_path / "h", words=("head.safetensors", "re-create"))


def test_cache_info_missing_and_not_a_cache(tmp_path, capsys):
    user_error(capsys, "cache", "info", tmp_path / "nope", words=("does not exist",))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hello")
    user_error(capsys, "cache", "info", tmp_path / "junk", words=("cache.json",))


def test_cache_info_into_a_closed_pipe_exits_quietly(tmp_path):
    store = make_cache(tmp_path / "c", ratios={"train": 1.0})
    proc = subprocess_cli("cache", "info", store)
    proc.stdout.close()  # like `aigi cache info C | head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=600) != 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


# ------------------------------------------------------------------------------------------------ import / export


def test_import_uar_pickled_npy_is_skipped_and_named(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=2)
    np.save(tmp_path / "npy" / "0_real" / "000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = cli(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c")
    assert code == 0 and "Traceback" not in err
    assert "skipped 1 file(s)" in err and "000.npy" in err and "pickle" in err  # never unpickled, the rest imported
    assert len(cache.open(tmp_path / "c")) == 3


def test_import_uar_every_npy_pickled(tmp_path, capsys):
    (tmp_path / "npy" / "0_real").mkdir(parents=True)
    np.save(tmp_path / "npy" / "0_real" / "000.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    user_error(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c", words=("000.npy", "pickle"))
    assert not (tmp_path / "c" / "shards").exists() or not any((tmp_path / "c" / "shards").iterdir())


def test_import_uar_empty_folder(tmp_path, capsys):
    (tmp_path / "npy").mkdir()
    user_error(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "c", words=("0_real", "1_fake"))
    assert not (tmp_path / "c").exists()


def test_reimport_with_another_split_ratio_says_what_happens(tmp_path, capsys):
    uar_folder(tmp_path / "npy")
    base = ["import", "uar", tmp_path / "npy", "--cache", tmp_path / "c"]
    assert cli(capsys, *base, "--split-ratio", "train=0.8,test=0.2")[0] == 0
    before = cache.open(tmp_path / "c").meta()[["image_id", "split"]]
    code, out, err = cli(capsys, *base, "--split-ratio", "train=0.5,test=0.5")
    assert code == 0, err
    after = cache.open(tmp_path / "c").meta()[["image_id", "split"]]
    pd.testing.assert_frame_equal(before, after)
    assert "keep their split" in out + err and "new cache" in out + err
    record((out + err).strip().splitlines()[-1])


def test_export_npy_never_writes_outside_the_output_folder(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=3)
    assert main(["import", "uar", str(tmp_path / "npy"), "--cache", str(tmp_path / "c"),
                 "--source", "../../escape"]) == 0  # fmt: skip
    out = tmp_path / "deep" / "er" / "out"
    code, _, err = cli(capsys, "export", "npy", tmp_path / "c", "-o", out)
    assert code == 0, err
    files = sorted(p for p in tmp_path.rglob("*.npy") if not p.is_relative_to(tmp_path / "npy"))
    assert len(files) == 6 and all(p.resolve().is_relative_to(out.resolve()) for p in files)


def test_export_npy_of_a_view_the_cache_lacks(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=2)
    assert main(["import", "uar", str(tmp_path / "npy"), "--cache", str(tmp_path / "c")]) == 0
    user_error(capsys, "export", "npy", tmp_path / "c", "-o", tmp_path / "out", "--view", "jpeg:75",
               words=("jpeg:75", "'orig'", "--view"))  # fmt: skip
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ train / eval


@pytest.fixture
def syn(tmp_path: Path) -> dict:
    store = make_cache(tmp_path / "cache", ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    cfg = write_config(tmp_path / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)})
    return {"cache": store, "config": cfg, "tmp": tmp_path}


def test_train_yaml_syntax_error(syn, capsys):
    bad = syn["tmp"] / "bad.yaml"
    bad.write_text("head: {name: linear\nfit: [")
    line = user_error(capsys, "train", bad, "-o", syn["tmp"] / "run", words=("bad.yaml", "YAML", "line 2", "fix"))
    assert "<unicode string>" not in line
    assert not (syn["tmp"] / "run").exists()


def test_train_config_that_is_not_text(syn, capsys):
    bad = syn["tmp"] / "weights.yaml"
    bad.write_bytes(b"\x80\x04\x95\xff\x00pickle")
    user_error(capsys, "train", bad, "-o", syn["tmp"] / "run", words=("weights.yaml", "UTF-8 YAML"))


def test_train_yaml_of_the_wrong_shape(syn, capsys):
    bad = syn["tmp"] / "list.yaml"
    bad.write_text("- linear\n- adam\n")
    user_error(capsys, "train", bad, "-o", syn["tmp"] / "run", words=("list.yaml", "mapping"))


def test_train_yaml_python_tag_is_refused(syn, capsys):
    marker = syn["tmp"] / "code_ran"
    bad = syn["tmp"] / "tag.yaml"
    bad.write_text(f"head: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    user_error(capsys, "train", bad, "-o", syn["tmp"] / "run", words=("tag.yaml",))
    assert not marker.exists()


def test_train_value_of_the_wrong_type(syn, capsys):
    user_error(capsys, "train", syn["config"], "--set", "fit.lr=fast", "-o", syn["tmp"] / "run", words=("lr", "fast"))


def test_train_unknown_optimizer_lists_the_valid_ones(syn, capsys):
    user_error(capsys, "train", syn["config"], "--set", "fit.optimizer=adamm", "-o", syn["tmp"] / "run",
               words=("adamm", "adam or adamw"))  # fmt: skip


def test_train_where_value_lists_that_columns_values(syn, capsys):
    line = user_error(capsys, "train", syn["config"], "--set", "data.where.view=jpeg", "-o", syn["tmp"] / "run",
                      words=("view", "jpeg", "orig"))  # fmt: skip
    assert "'test'" not in line and "'val'" not in line


def test_eval_where_value_lists_that_columns_values(syn, capsys):
    run = syn["tmp"] / "run"
    assert cli(capsys, "train", syn["config"], "-o", run)[0] == 0
    user_error(capsys, "eval", run, "--where", "view=jpeg:75", "-o", syn["tmp"] / "rep",
               words=("view", "jpeg:75", "'orig'", "--where view=VALUE"))  # fmt: skip
    assert not (syn["tmp"] / "rep").exists()


def test_train_refuses_to_overwrite_a_run(syn, capsys):
    run = syn["tmp"] / "run"
    assert cli(capsys, "train", syn["config"], "-o", run)[0] == 0
    before = (run / "head.safetensors").read_bytes()
    user_error(capsys, "train", syn["config"], "--set", "fit.seed=5", "-o", run, words=("already", "--overwrite"))
    assert (run / "head.safetensors").read_bytes() == before
    assert cli(capsys, "train", syn["config"], "--set", "fit.seed=5", "-o", run, "--overwrite")[0] == 0
    assert (run / "head.safetensors").read_bytes() != before


def test_train_interrupted_says_nothing_was_saved(syn, capsys, monkeypatch):
    from aigi import heads

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads, "fit", interrupted)
    code, out, err = cli(capsys, "train", syn["config"], "-o", syn["tmp"] / "run")
    assert code == 130 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("aigi")][-1]
    assert line.startswith("aigi train: interrupted") and "resume" not in line and "start" in line
    record(line)
    assert not (syn["tmp"] / "run").exists()


def test_train_expert_patterns_matching_no_fake_name_the_sources(syn, capsys):
    head = {"name": "concat", "inputs": ["f"], "experts": {"vae": ["vae*"], "sr": ["sr:*"]}, "rank": 2}
    cfg = write_config(syn["tmp"] / "concat.yaml", head=head, caches={"syn": str(syn["cache"])})
    user_error(capsys, "train", cfg, "-o", syn["tmp"] / "run", words=("expert:sr", "'gan', 'real', 'vae'", "patterns"))
    assert not (syn["tmp"] / "run").exists()


def test_train_missing_cache(syn, capsys):
    user_error(capsys, "train", syn["config"], "--cache", syn["tmp"] / "nope", "-o", syn["tmp"] / "run",
               words=("nope", "does not exist"))  # fmt: skip


def test_eval_negative_bootstrap(syn, capsys):
    run = syn["tmp"] / "run"
    assert cli(capsys, "train", syn["config"], "-o", run)[0] == 0
    user_error(capsys, "eval", run, "--bootstrap", "-5", "-o", syn["tmp"] / "rep", words=("--bootstrap", "-5"))
    assert not (syn["tmp"] / "rep").exists()


def test_eval_untrained_imported_gapl_head(syn, capsys, tmp_path):
    store = make_cache(tmp_path / "pc", ratios={"train": 0.5, "test": 0.5}, feature="pooler")
    torch.save(torch.randn(16, 8), tmp_path / "stage1.pt")
    torch.save(torch.randn(8, 16), tmp_path / "protos.pt")
    assert main(["head", "import-gapl", "--stage1", str(tmp_path / "stage1.pt"), "--prototypes",
                 str(tmp_path / "protos.pt"), "-o", str(tmp_path / "gapl")]) == 0  # fmt: skip
    capsys.readouterr()
    user_error(capsys, "eval", tmp_path / "gapl", "--cache", store, "-o", tmp_path / "rep",
               words=("untrained", "stage 2"))  # fmt: skip


def test_eval_gapl_head_after_stage2_training(syn, capsys, tmp_path):
    store = make_cache(tmp_path / "pc", ratios={"train": 0.6, "val": 0.2, "test": 0.2}, feature="pooler")
    torch.save(torch.randn(16, 8), tmp_path / "stage1.pt")
    torch.save(torch.randn(8, 16), tmp_path / "protos.pt")
    assert main(["head", "import-gapl", "--stage1", str(tmp_path / "stage1.pt"), "--prototypes",
                 str(tmp_path / "protos.pt"), "-o", str(tmp_path / "gapl")]) == 0  # fmt: skip
    cfg = write_config(tmp_path / "s2.yaml", head={"name": "prototype", "inputs": ["pooler"]},
                       caches={"c": str(store)})  # fmt: skip
    code, _, err = cli(capsys, "train", cfg, "--init", tmp_path / "gapl", "-o", tmp_path / "run")
    assert code == 0, err
    from safetensors.torch import load_file

    got, imported = load_file(tmp_path / "run" / "head.safetensors"), load_file(tmp_path / "gapl" / "head.safetensors")
    torch.testing.assert_close(got["prototypes"], imported["prototypes"])  # the released prototypes are kept
    assert not torch.equal(got["fc.weight"], imported["fc.weight"])  # stage 2 trained
    code, _, err = cli(capsys, "eval", tmp_path / "run", "-o", tmp_path / "rep")
    assert code == 0, err


def test_ablate_preset_without_its_cache_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_error(capsys, "ablate", ROOT / "configs" / "ablate_fusion.yaml", "-o", tmp_path / "abl",
               words=("features/uar_sr", "bench_ablate.py"))  # fmt: skip
    assert not (tmp_path / "abl").exists()


# ------------------------------------------------------------------------------------------------ aigi extract


def test_extract_without_weights_is_refused(tmp_path, capsys):
    manifest = make_manifest(tmp_path, 2)
    user_error(capsys, "extract", "--manifest", manifest, "--backbone", "timm:vit_tiny_patch16_224",
               "--cache", tmp_path / "c", words=("--weights", "--random-weights"))  # fmt: skip
    assert not (tmp_path / "c").exists()


def test_extract_random_weights_on_request(tmp_path, capsys):
    manifest = make_manifest(tmp_path, 2)
    code, _, err = cli(capsys, "extract", "--manifest", manifest, "--backbone", "timm:vit_tiny_patch16_224",
                       "--features", "pooler", "--cache", tmp_path / "c", "--random-weights")  # fmt: skip
    assert code == 0, err
    assert cache.open(tmp_path / "c").spec["weights_sha256"] == "random-init"


def test_extract_pickled_weights(tmp_path, capsys):
    manifest = make_manifest(tmp_path, 2)
    marker = tmp_path / "code_ran"
    evil = evil_pickle(tmp_path / "vit.pth", marker)
    user_error(capsys, *extract_args(manifest, tmp_path / "c", evil), words=("vit.pth",))
    assert not marker.exists()


def test_extract_every_image_unreadable(tmp_path, capsys, weights):  # noqa: F811
    bad = tmp_path / "img"
    bad.mkdir()
    rows = []
    for i, data in enumerate((b"", b"not an image", b"\x89PNG\r\n\x1a\n")):
        (bad / f"b{i}.png").write_bytes(data)
        rows.append({"image_id": f"{i:064x}", "path": f"img/b{i}.png", "label": 0, "source": "real"})
    manifest = cache.write_manifest(pd.DataFrame(rows), tmp_path / "m.parquet")
    user_error(capsys, *extract_args(manifest, tmp_path / "c", weights), words=("every", "img/b0.png"))


def test_extract_interrupted_then_resumed(tmp_path, weights, monkeypatch, capsys):  # noqa: F811
    # Ctrl-C lands right after the first shard is committed, whatever the machine's speed (a signal sent from
    # outside races a fast machine, which may finish all shards first).
    from aigi.cache.writer import CacheWriter

    manifest = make_manifest(tmp_path, 8)
    args = extract_args(manifest, tmp_path / "c", weights)
    args[args.index("--shard-size") + 1] = "1"
    args[args.index("--batch-size") + 1] = "1"
    write_shard = CacheWriter.write_shard

    def then_interrupt(self, *a, **k):
        write_shard(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(CacheWriter, "write_shard", then_interrupt)
    code, _, err = cli(capsys, *args)
    assert code == 130, err
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("aigi")][-1]
    assert line.startswith("aigi extract: interrupted") and "re-run" in line
    record(line)
    assert len(cache.open(tmp_path / "c")) == 1 and tmp_files(tmp_path / "c") == []
    monkeypatch.setattr(CacheWriter, "write_shard", write_shard)
    rerun = subprocess_cli(*args)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert len(cache.open(tmp_path / "c")) == 8 and tmp_files(tmp_path / "c") == []


# ------------------------------------------------------------------------------------ optional parts (pip extras)
# A second Python whose import system refuses the optional packages, as where they are not installed; it runs the
# real command line and reports which optional modules ended up imported.

OPTIONAL = ("diffusers", "spandrel", "dask", "distributed", "matplotlib")
WITHOUT = """
import sys
blocked = set(sys.argv[1].split(",")) - {""}

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
if sys.argv[2:] == ["--import-aigi"]:
    import aigi
    code = 0
else:
    from aigi.cli import main
    code = main(sys.argv[2:])
print("optional modules imported:", ",".join(m for m in OPTIONAL if m in sys.modules) or "none", file=sys.stderr)
sys.exit(code)
""".replace("OPTIONAL", repr(OPTIONAL))


def aigi_without(blocked: tuple[str, ...], *argv: object) -> subprocess.CompletedProcess:
    """`aigi ARGV` in a fresh process where the `blocked` packages cannot be imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AIGI_DEBUG", None)
    cmd = [sys.executable, "-c", WITHOUT, ",".join(blocked), *map(str, argv)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def missing_extra(proc: subprocess.CompletedProcess, command: str, extra: str) -> str:
    """Exit 2, no traceback, one `aigi COMMAND: error:` line naming `pip install 'aigi[EXTRA]'`."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("aigi ")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"aigi {command}: error: ") and f"pip install 'aigi[{extra}]'" in lines[0], lines[0]
    record(lines[0])
    return lines[0]


def test_core_commands_run_without_the_optional_parts(syn, capsys, predict_run, weights):  # noqa: F811
    for argv in (["--import-aigi"], ["train", syn["config"], "-o", syn["tmp"] / "run"]):
        proc = aigi_without((), *argv)
        assert proc.returncode == 0, proc.stderr
        assert "optional modules imported: none" in proc.stderr, argv
    root, run = predict_run
    proc = aigi_without((), "predict", run, root / "img", "--weights", weights, "-o", syn["tmp"] / "scores.csv")
    assert proc.returncode == 0, proc.stderr
    assert "optional modules imported: none" in proc.stderr
    assert len(pd.read_csv(syn["tmp"] / "scores.csv")) == 12
    # eval draws figures with matplotlib; without it the tables are written and one line says the plots were skipped
    proc = aigi_without(OPTIONAL, "eval", syn["tmp"] / "run", "-o", syn["tmp"] / "bare")
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if "plots skipped" in line]
    assert len(skipped) == 1 and "pip install 'aigi[plots]'" in skipped[0], proc.stderr
    code, _, err = cli(capsys, "eval", syn["tmp"] / "run", "-o", syn["tmp"] / "full")
    assert code == 0, err
    bare, full = (syn["tmp"] / name for name in ("bare", "full"))
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (bare, full)]
    bare_m, full_m = ({k: v for k, v in m.items() if k != "rows_held"} for m in metrics)  # (names a memory budget)
    assert bare_m == full_m and "auc" in full_m["mean"]
    assert sorted(p.name for p in full.glob("*.png")) == ["acc_by_group.png", "roc.png", "score_hist.png"]
    assert list(bare.glob("*.png")) == [] and "plots skipped" in (bare / "report.md").read_text()


@pytest.mark.parametrize(("kind", "blocked", "weights_file"), [
    ("vae", "diffusers", ROOT / "fakes" / "weights" / "small_vae"),
    ("sr", "spandrel", ROOT / "fakes" / "weights" / "small_sr_x4.safetensors"),
])  # fmt: skip
def test_fakes_without_its_package_names_the_fakes_extra(tmp_path, reals, kind, blocked, weights_file):
    proc = aigi_without((blocked,), "fakes", kind, "--manifest", reals, "--weights", weights_file,
                        "--out", tmp_path / "f", "--device", "cpu")  # fmt: skip
    assert blocked in missing_extra(proc, "fakes", "fakes")
    assert not (tmp_path / "f").exists()


def test_demo_without_its_packages_names_the_demo_extra(tmp_path):
    proc = aigi_without(("diffusers",), "demo", "-o", tmp_path / "demo", "--quick")
    assert "diffusers" in missing_extra(proc, "demo", "demo")
    assert not (tmp_path / "demo").exists()  # checked before any step


def test_fakes_vae_from_a_taesd_pair_needs_no_extra(tmp_path, reals):
    from aigi.fakes.taesd import TinyAutoencoder
    from tests.pipeline.test_fakes import save_pair

    torch.manual_seed(0)
    save_pair(TinyAutoencoder(4), tmp_path / "taesd", "taesd")
    proc = aigi_without(OPTIONAL, "fakes", "vae", "--manifest", reals, "--weights", tmp_path / "taesd",
                        "--out", tmp_path / "f", "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "f").rglob("1_fake/**/*.png")) == ["a.png", "b.png"]


def test_dask_options_without_dask_name_the_dask_extra(tmp_path, syn, weights):  # noqa: F811
    manifest = make_manifest(tmp_path, 2)
    proc = aigi_without(("dask", "distributed"), *extract_args(manifest, tmp_path / "c", weights), "--workers", "2")
    assert "--workers" in missing_extra(proc, "extract", "dask")
    assert not (tmp_path / "c").exists()
    ablation = yaml.safe_load(syn["config"].read_text())
    ablation.update(variants={"a": {}, "b": {"fit.lr": 0.01}}, seeds=[0])
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(ablation), encoding="utf-8")
    proc = aigi_without(("dask", "distributed"), "ablate", tmp_path / "abl.yaml", "-o", tmp_path / "a", "--workers", 2)
    missing_extra(proc, "ablate", "dask")
    assert not (tmp_path / "a" / "runs").exists() or not any((tmp_path / "a" / "runs").iterdir())
    # local processes need neither dask nor matplotlib: the summary is written, its figure skipped with one line
    proc = aigi_without(OPTIONAL, "ablate", tmp_path / "abl.yaml", "-o", tmp_path / "a", "--jobs", 2)
    assert proc.returncode == 0, proc.stderr
    assert "plots skipped" in proc.stderr and "aigi[plots]" in proc.stderr
    assert (tmp_path / "a" / "summary.md").is_file() and not (tmp_path / "a" / "summary.png").exists()
    assert len(pd.read_parquet(tmp_path / "a" / "results.parquet")) == 2
