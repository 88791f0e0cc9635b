"""Faults a careless user or a full disk causes: one clear line naming the file and exit 2, never a traceback;
a killed run leaves nothing a later run trips over; a repeated manifest row is refused."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from aigi import cache
from aigi.cli import main
from tests.pipeline.test_import import make_sets

ROOT = Path(__file__).resolve().parents[2]


def limit_file_size(nbytes: int):
    """preexec_fn: files may not grow beyond `nbytes` (writes fail with EFBIG, as on a full disk with ENOSPC)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def aigi(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AIGI_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "aigi", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        preexec_fn=limit_file_size(limit) if limit else None,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_write_failure_during_import_is_one_line_and_keeps_whole_shards(tmp_path):
    make_sets(tmp_path / "a", ("g",), n=200, dim=64)
    line = one_line(aigi("import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c"), "--shard-size",
                         "50", limit=30_000))  # fmt: skip
    assert "aigi import: error: " in line and str(tmp_path / "c" / "shards") in line and "File too large" in line
    done = cache.verify(tmp_path / "c")["rows"]  # what was committed is sound
    assert done % 50 == 0 and done < 400
    assert not [p for p in (tmp_path / "c").rglob(".*.tmp-*")]  # the temporary file went with the error
    assert main(["import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c"), "--shard-size", "50"]) == 0
    assert cache.verify(tmp_path / "c")["rows"] == 400


def test_write_failure_during_compact_and_export_is_one_line(tmp_path):
    make_sets(tmp_path / "a", ("g",), n=200, dim=64)
    assert main(["import", "uar", str(tmp_path / "a"), "--cache", str(tmp_path / "c")]) == 0
    line = one_line(aigi("cache", "compact", str(tmp_path / "c"), "-o", str(tmp_path / "all.h5"), limit=30_000))
    assert str(tmp_path / "all.h5") in line
    assert not (tmp_path / "all.h5").exists() and not list(tmp_path.glob(".all.h5.tmp-*"))
    line = one_line(aigi("export", "npy", str(tmp_path / "c"), "-o", str(tmp_path / "out"), limit=200))
    assert str(tmp_path / "out") in line and ".npy" in line


def test_yaml_tag_in_set_is_refused_in_one_line(tmp_path):
    flag = tmp_path / "ran"
    value = f"!!python/object/apply:os.system ['touch {flag}']"
    line = one_line(aigi("train", str(ROOT / "configs/uar.yaml"), "--set", f"fit.lr={value}", "-o",
                         str(tmp_path / "run")))  # fmt: skip
    assert "ConstructorError" in line and "python/object/apply:os.system" in line
    assert not flag.exists()


def test_repeated_manifest_rows_are_refused_with_their_paths(tmp_path, capsys):
    rows = pd.DataFrame({"image_id": ["a", "b", "a", "c"], "path": ["x/1.png", "x/2.png", "y/1.png", "x/3.png"],
                         "label": [0, 1, 0, 1], "source": ["s"] * 4})  # fmt: skip
    rows.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"2 rows repeat a image_id .* paths \['x/1.png', 'y/1.png'\]"):
        cache.read_manifest(tmp_path / "m.csv")
    with pytest.raises(ValueError, match="repeat a path"):
        cache.write_manifest(rows.assign(image_id=["a", "b", "d", "c"], path=["p", "q", "p", "r"]), tmp_path / "o.pq")
    args = ["extract", "--manifest", str(tmp_path / "m.csv"), "--backbone", "timm:resnet18", "--random-weights",
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 2
    assert "rows repeat a image_id" in capsys.readouterr().err


def _evil_pickle(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {path}.ran",))

    torch.save({"w": Evil()}, path)


def test_pickled_code_in_taesd_and_diffusers_folders_is_one_line(tmp_path, capsys):
    from tests.pipeline.test_fakes import tiny_kl, write_reals

    manifest = write_reals(tmp_path / "reals", [("x.png", 16, 16)])
    (tmp_path / "taesd").mkdir()
    for part in ("encoder", "decoder"):
        _evil_pickle(tmp_path / "taesd" / f"taesd_{part}.pth")
    tiny_kl().save_pretrained(tmp_path / "kl", safe_serialization=False)
    _evil_pickle(tmp_path / "kl" / "diffusion_pytorch_model.bin")
    for weights, name in ((tmp_path / "taesd", "taesd_encoder.pth"), (tmp_path / "kl", "kl")):
        capsys.readouterr()
        base = ["fakes", "vae", "--manifest", str(manifest), "--out", str(tmp_path / "o"), "--weights", str(weights)]
        assert main(base) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and name in err[0], err
    assert not list(tmp_path.rglob("*.ran"))  # nothing executed


KILLED_FAKES = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {root!r})
    real_replace = os.replace

    def slow_replace(src, dst):
        if str(dst).endswith(".png") and "1_fake" in str(dst):
            print("writing", flush=True)
            time.sleep(60)  # killed here: the fake is complete under its temporary name only
        real_replace(src, dst)

    os.replace = slow_replace
    from aigi.cli import main
    main(["fakes", "vae", "--manifest", {manifest!r}, "--weights", {weights!r}, "-o", {out!r},
          "--output-manifest", {om!r}])
    """
)


def test_a_killed_fakes_run_leaves_no_temporary_file_for_later_runs(tmp_path, capsys):
    from tests.pipeline.test_fakes import tiny_kl, write_reals

    manifest = write_reals(tmp_path / "reals", [("x.png", 16, 16), ("y.png", 16, 16)])
    tiny_kl().save_pretrained(tmp_path / "kl")
    out, om = tmp_path / "o", tmp_path / "o" / "m.parquet"
    code = KILLED_FAKES.format(root=str(ROOT), manifest=str(manifest), weights=str(tmp_path / "kl"), out=str(out),
                               om=str(om))  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "writing"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert [p.name for p in out.rglob(".*.tmp*")]  # the partial file of the killed run
    args = ["fakes", "vae", "--manifest", str(manifest), "--weights", str(tmp_path / "kl"), "--out", str(out)]
    assert main([*args, "--format", "jpeg:90", "--output-manifest", str(om)]) == 0  # a later run, other settings
    assert not list(out.rglob(".*.tmp*"))
    capsys.readouterr()
    assert main(["index", str(out / "vae_kl"), "-o", str(tmp_path / "again.parquet")]) == 0
    assert "skipped" not in capsys.readouterr().err  # indexing the output meets no partial file
    paths = cache.read_manifest(tmp_path / "again.parquet")["path"]
    assert sorted(Path(p).name for p in paths) == ["x.jpg", "y.jpg"]
