"""The one output rule, through the real command line: an output that is or lies inside one of the command's inputs
is refused, an existing output needs --overwrite and is then replaced whole, one command's files appear together or
not at all, one writer per output, and absurd targets get one line (issue 28, cases 2-7 and 15)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from aigi import cache
from aigi.cli import main
from aigi.common.outputs import TargetLock, check_output, committed, recover
from tests.pipeline.test_cli_errors import cli, photo, uar_folder, user_error
from tests.pipeline.test_train_eval import make_cache, write_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cache, a config and a run trained on it (read-only for the tests: each copies what it changes)."""
    tmp = tmp_path_factory.mktemp("outputs")
    store = make_cache(tmp / "cache", ratios={"train": 0.6, "val": 0.2, "test": 0.2})
    cfg = write_config(tmp / "run.yaml", head={"name": "linear", "inputs": ["f"]}, caches={"syn": str(store)}, epochs=1)
    assert main(["train", str(cfg), "-o", str(tmp / "run")]) == 0
    return {"cache": store, "config": cfg, "run": tmp / "run", "tmp": tmp}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def untouched(world: dict):
    """Asserts after the test that the shared run and cache are byte for byte as before."""
    before = {k: snapshot(world[k]) for k in ("run", "cache")}
    yield
    assert {k: snapshot(world[k]) for k in ("run", "cache")} == before


# ------------------------------------------------------------------------------ outputs inside inputs (cases 2, 3, 5)


@pytest.mark.parametrize("target", ["run/head.json", "cache/shards/x.csv", "cache/cache.json", "cache/index.json"])
def test_predict_never_writes_over_the_run_or_the_cache(world, capsys, untouched, target):
    out = world["tmp"] / target
    user_error(capsys, "predict", world["run"], "--cache", world["cache"], "-o", out, "--overwrite",
               words=("lies inside", "choose -o outside"))  # fmt: skip


@pytest.mark.parametrize("target", ["shards/00000.h5", "cache.json", "index.json", "."])
def test_compact_never_writes_into_the_cache(world, capsys, untouched, target):
    out = world["cache"] / target
    line = user_error(capsys, "cache", "compact", world["cache"], "-o", out, "--overwrite")
    assert "inside" in line or " is the cache" in line or ".h5" in line
    assert cache.verify(world["cache"])["rows"] == 150


def test_compact_refuses_a_name_it_cannot_read_back_and_an_existing_file(world, tmp_path, capsys, untouched):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    user_error(capsys, "cache", "compact", world["cache"], "-o", notes, words=("notes.txt", "--overwrite"))
    user_error(capsys, "cache", "compact", world["cache"], "-o", notes, "--overwrite", words=("notes.txt", ".h5"))
    assert notes.read_text() == "mine"
    old = tmp_path / "existing.h5"
    old.write_bytes(b"not replaced")
    user_error(
        capsys, "cache", "compact", world["cache"], "-o", old, words=("existing.h5", "already exists", "--overwrite")
    )
    assert old.read_bytes() == b"not replaced"
    code, _, err = cli(capsys, "cache", "compact", world["cache"], "-o", old, "--overwrite")
    assert code == 0, err
    assert len(cache.open(old)) == 150


@pytest.mark.parametrize("target", ["/", "cache", "cache/shards", "cache/shards/x"])
def test_train_and_eval_never_write_into_root_or_caches(world, capsys, monkeypatch, untouched, target):
    def stage_reached(*args, **kwargs):  # the check must refuse first: nothing may be written here
        raise AssertionError("the stage ran")

    monkeypatch.setattr("aigi.pipeline.train.train_run", stage_reached)
    monkeypatch.setattr("aigi.pipeline.evaluate.evaluate_run", stage_reached)
    out = target if target == "/" else world["tmp"] / target
    for command in (["train", world["config"]], ["eval", world["run"]]):
        line = user_error(capsys, *command, "-o", out, "--overwrite")
        assert "root folder" in line or "inside the cache" in line or " is the cache" in line, line


@pytest.mark.parametrize("target", ["run", "run/head.json", "run/config.yaml"])
def test_eval_never_writes_over_the_run(world, capsys, monkeypatch, untouched, target):
    monkeypatch.setattr("aigi.pipeline.evaluate.evaluate_run", lambda *a, **k: pytest.fail("the stage ran"))
    user_error(capsys, "eval", world["run"], "-o", world["tmp"] / target, "--overwrite", words=("the run",))


def test_a_report_may_go_into_a_new_folder_of_the_run_it_reads(world, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    code, _, err = cli(capsys, "eval", run, "-o", run / "eval")
    assert code == 0, err
    assert (run / "eval" / "metrics.json").is_file()
    user_error(capsys, "eval", run, "-o", run / "eval", words=("already exists", "--overwrite"))
    # retraining the run keeps the report folder inside it (not a file train writes)
    code, _, err = cli(capsys, "train", world["config"], "-o", run, "--overwrite")
    assert code == 0, err
    assert (run / "eval" / "metrics.json").is_file() and (run / "head.json").is_file()


def test_export_into_the_folder_it_was_imported_from_is_refused(tmp_path, capsys):
    source = uar_folder(tmp_path / "npy" / "progan", n=6)
    before = snapshot(tmp_path / "npy")
    assert main(["import", "uar", str(tmp_path / "npy"), "--cache", str(tmp_path / "c"), "--dtype", "float16"]) == 0
    user_error(capsys, "export", "npy", tmp_path / "c", "-o", tmp_path / "npy", words=("already exists", "--overwrite"))
    assert snapshot(tmp_path / "npy") == before and source.is_dir()


def test_export_with_overwrite_replaces_an_earlier_export_whole(tmp_path, capsys):
    uar_folder(tmp_path / "npy" / "a", n=4)
    assert main(["import", "uar", str(tmp_path / "npy"), "--cache", str(tmp_path / "c")]) == 0
    assert main(["export", "npy", str(tmp_path / "c"), "-o", str(tmp_path / "out")]) == 0
    (tmp_path / "out" / "a" / "0_real" / "zzz.npy").write_bytes(b"stale export file")
    (tmp_path / "out" / "README.txt").write_text("the user's note")
    code, _, err = cli(capsys, "export", "npy", tmp_path / "c", "-o", tmp_path / "out", "--overwrite")
    assert code == 0, err
    assert not (tmp_path / "out" / "a" / "0_real" / "zzz.npy").exists()  # a stale file of the export's kind
    assert (tmp_path / "out" / "README.txt").read_text() == "the user's note"  # another file is kept
    assert len(list((tmp_path / "out").rglob("*.npy"))) == 8


def test_head_import_over_a_trained_run_needs_overwrite_and_replaces_the_run_whole(world, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    torch.save({"weight": torch.randn(1, 8), "bias": torch.zeros(1)}, tmp_path / "probe.pth")
    before = snapshot(run)
    user_error(capsys, "head", "import-linear", tmp_path / "probe.pth", "--feature", "f", "-o", run,
               words=("already exists", "--overwrite"))  # fmt: skip
    assert snapshot(run) == before
    code, _, err = cli(capsys, "head", "import-linear", tmp_path / "probe.pth", "--feature", "f", "-o", run,
                       "--overwrite")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["head.json", "head.safetensors"]  # no stale config.yaml


def test_index_over_an_existing_file_needs_overwrite(tmp_path, capsys):
    photo(tmp_path / "set" / "real" / "a.png", 0)
    notes = tmp_path / "existing.txt"
    notes.write_text("keep me")
    user_error(capsys, "index", tmp_path / "set", "-o", notes, words=("existing.txt", "--overwrite"))
    assert notes.read_text() == "keep me"


def test_import_refuses_a_cache_inside_the_folder_or_a_folder_of_other_files(tmp_path, capsys):
    uar_folder(tmp_path / "npy", n=2)
    before = snapshot(tmp_path / "npy")
    user_error(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "npy" / "c", words=("inside",))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("x")
    user_error(capsys, "import", "uar", tmp_path / "npy", "--cache", tmp_path / "home", words=("not a feature cache",))
    assert snapshot(tmp_path / "npy") == before and sorted(os.listdir(tmp_path / "home")) == ["notes.txt"]


# ------------------------------------------------------------------------------ together or not at all (case 6)


def test_eval_on_a_full_disk_leaves_no_half_report(world, tmp_path, capsys, monkeypatch):
    real = pd.DataFrame.to_parquet

    def disk_full(self, path, *args, **kwargs):
        if "scores" in str(path) or ".tmp" in str(path):
            Path(path).write_bytes(b"PAR1 trunc")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    code, _, err = cli(capsys, "eval", world["run"], "-o", tmp_path / "rep")
    assert code == 2 and "Traceback" not in err and "No space left" in err
    assert not (tmp_path / "rep").exists() and os.listdir(tmp_path) == []


def test_a_commit_killed_halfway_is_finished_by_the_next_writer(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "a.md").write_text("old a")
    (target / "b.md").write_text("old b, no longer written")
    (target / "notes.txt").write_text("the user's")
    out = check_output(target, kind="folder", overwrite=True, owned=("*.md",))
    with pytest.raises(KeyboardInterrupt), committed(out) as stage:
        (stage / "a.md").write_text("new a")
        raise KeyboardInterrupt  # interrupted before the commit: as if it never ran
    assert (target / "a.md").read_text() == "old a" and [p.name for p in tmp_path.iterdir()] == ["report"]
    # a commit marked complete but cut short (killed after the mark): the next writer of the target finishes it
    stage = tmp_path / ".report.stage-deadhost-1"
    stage.mkdir()
    (stage / "a.md").write_text("new a")
    (stage / ".aigi-complete").write_text(json.dumps({"remove": ["b.md"]}))
    with TargetLock(target, str(target)):
        assert recover(target) == [stage]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.md": "new a", "notes.txt": "the user's"}
    # a staging folder left unmarked (killed while the stage wrote) is removed, the target untouched
    (tmp_path / ".report.stage-deadhost-2").mkdir()
    (tmp_path / ".report.stage-deadhost-2" / "a.md").write_text("half")
    with committed(check_output(target, kind="folder", overwrite=True, owned=("*.md",))) as again:
        (again / "c.md").write_text("c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert {p.name: p.read_text() for p in target.iterdir()} == {"c.md": "c", "notes.txt": "the user's"}


# ------------------------------------------------------------------------------ one writer per output (case 7)


def test_a_second_writer_of_the_same_output_is_refused_at_once(world, tmp_path, capsys):
    target = tmp_path / "run"
    with TargetLock(target, str(target)):  # another process (another open file) writing it now
        line = user_error(capsys, "train", world["config"], "-o", target, words=("being written", "pid"))
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert "wait" in line
    code, _, err = cli(capsys, "train", world["config"], "-o", target)
    assert code == 0, err


@pytest.mark.slow
def test_two_trainings_started_together_one_wins_whole_the_other_is_refused(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AIGI_DEBUG", None)
    argv = [sys.executable, "-m", "aigi", "train", str(world["config"]), "-o", str(tmp_path / "run")]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "being written" in refused or "already exists" in refused
    info = json.loads((tmp_path / "run" / "head.json").read_text())
    assert info["name"] == "linear" and sorted(os.listdir(tmp_path)) == ["run"]


# ------------------------------------------------------------------------------ absurd targets (case 15)


def test_output_names_of_the_longest_valid_length_work(world, tmp_path, capsys):
    name = "r" * 250 + ".csv"
    code, _, err = cli(capsys, "predict", world["run"], "--cache", world["cache"], "-o", tmp_path / name)
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / name)) == 150
    run = tmp_path / ("h" * 255)
    code, _, err = cli(capsys, "head", "import-uar", _uar_probe(tmp_path), "-o", run)
    assert code == 0, err
    assert (run / "head.json").is_file()


def _uar_probe(folder: Path) -> Path:
    torch.save({"linear.weight": torch.randn(1, 8), "linear.bias": torch.zeros(1)}, folder / "uar.pth")
    return folder / "uar.pth"


def test_absurd_targets_get_one_line(world, tmp_path, capsys):
    (tmp_path / "existing").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        ("/", ("root folder",)),
        (str(tmp_path / "existing"), ("folder",)),
        (str(tmp_path / "a_file" / "sub.h5"), ("is a file",)),
        (str(tmp_path / ("n" * 300 + ".h5")), ("255",)),
    ]
    for target, words in cases:
        line = user_error(capsys, "cache", "compact", world["cache"], "-o", target, words=words)
        assert "tmp-" not in line and "empty name" not in line
    assert (tmp_path / "a_file").read_text() == "x" and list((tmp_path / "existing").iterdir()) == []


def test_a_read_permission_error_does_not_say_to_choose_a_folder_to_write(tmp_path):
    from aigi.cli import user_message

    line = user_message(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "config.yaml")))
    assert "config.yaml" in line and "Permission denied" in line and "write to" not in line


@pytest.mark.timeout(60)
def test_a_special_file_is_no_output(world, tmp_path, capsys):
    fifo = tmp_path / "scores.csv"
    os.mkfifo(fifo)  # writing it would block until a reader comes
    user_error(capsys, "predict", world["run"], "--cache", world["cache"], "-o", fifo, "--overwrite",
               words=("not a regular file",))  # fmt: skip


# ------------------------------------------------------------------------------ more of the same kinds


def test_domains_never_rewrites_its_manifest_and_needs_overwrite(world, tmp_path, capsys):
    manifest = cache.write_manifest(cache.open(world["cache"]).meta().drop(columns="view"), tmp_path / "m.parquet")
    before = manifest.read_bytes()
    base = ["domains", "--cache", world["cache"], "--k", "2", "--manifest", manifest]
    user_error(capsys, *base, "-o", manifest, "--overwrite", words=("the file", "outside"))
    assert manifest.read_bytes() == before
    assert cli(capsys, *base, "-o", tmp_path / "m2.parquet")[0] == 0
    user_error(capsys, *base, "-o", tmp_path / "m2.parquet", words=("already exists", "--overwrite"))


def test_a_link_into_the_cache_is_the_cache(world, tmp_path, capsys, untouched):
    (tmp_path / "link").symlink_to(world["cache"] / "shards")
    user_error(capsys, "cache", "compact", world["cache"], "-o", tmp_path / "link" / "all.h5", words=("inside",))
    user_error(capsys, "eval", world["run"], "-o", tmp_path / "link", "--overwrite", words=("inside",))


def test_predict_never_writes_over_an_image_it_scores(world, tmp_path, capsys):
    img = photo(tmp_path / "imgs" / "a.png", 0).rename(tmp_path / "imgs" / "a.csv")  # named like a table
    before = img.read_bytes()
    user_error(capsys, "predict", world["run"], img, "-o", img, "--overwrite", words=("the image",))
    assert img.read_bytes() == before


def test_ablate_and_import_and_fakes_refuse_absurd_or_inner_targets(world, tmp_path, capsys, untouched):
    user_error(capsys, "ablate", world["config"], "-o", world["cache"] / "abl", words=("inside the cache",))
    uar_folder(tmp_path / "npy", n=2)
    user_error(capsys, "import", "uar", tmp_path / "npy", "--cache", "/", words=("root folder",))
    manifest = cache.write_manifest(cache.open(world["cache"]).meta().drop(columns="view"), tmp_path / "m.parquet")
    user_error(capsys, "fakes", "sr", "--manifest", manifest, "--weights", tmp_path / "w.pth", "-o", "/",
               words=("root folder",))  # fmt: skip
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("x")
    user_error(capsys, "extract", "--manifest", manifest, "--backbone", "timm:vit_tiny_patch16_224",
               "--random-weights", "--cache", tmp_path / "home", words=("not a feature cache",))  # fmt: skip
    assert sorted(os.listdir(tmp_path / "home")) == ["notes.txt"]


def test_calibrate_waits_for_no_one_while_the_run_is_written(world, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = snapshot(run)
    with TargetLock(run, str(run)):
        user_error(capsys, "calibrate", run, "--in-place", words=("being written",))
    assert snapshot(run) == before


def test_training_from_a_run_into_that_run_is_refused(world, capsys, untouched):
    user_error(capsys, "train", world["config"], "--init", world["run"], "-o", world["run"], "--overwrite",
               words=(" is the run",))  # fmt: skip


def test_a_report_folder_holding_only_its_html_is_a_report_folder(tmp_path):
    """report.html is a report's own file: a folder holding it needs --overwrite, and is not 'other files'."""
    from aigi.cli._options import REPORT_FILES

    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.html").write_text("<html></html>")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        check_output(rep, kind="folder", overwrite=False, owned=REPORT_FILES)
    assert check_output(rep, kind="folder", overwrite=True, owned=REPORT_FILES).path == rep
