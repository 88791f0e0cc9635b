"""Presets ship with the package: `aigi train uar` reads the same file as `aigi train configs/uar.yaml`, from anywhere,
and a wheel (a non-editable install) holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigi.cli import main
from aigi.pipeline.config import load_config, preset_names, presets_dir, resolve_config

ROOT = Path(__file__).resolve().parents[2]


def test_every_file_of_configs_is_a_preset() -> None:
    assert preset_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    assert {"uar", "gapl", "demo", "ablate_fusion"} <= set(preset_names())


def test_the_presets_are_regular_files_inside_the_package_and_its_package_data() -> None:
    """A symlinked presets folder is lost by sdists and by checkouts without symlinks: the files live in the package."""
    import tomllib

    from aigi import pipeline

    package = Path(pipeline.__file__).resolve().parent
    folder = package / "presets"
    assert folder.is_dir() and not folder.is_symlink()
    assert presets_dir().resolve() == folder
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools_cfg["package-data"]["aigi.pipeline"]
    shipped = {p.relative_to(package) for pattern in patterns for p in package.glob(pattern)}
    for name in preset_names():
        path = folder / f"{name}.yaml"
        assert path.is_file() and not path.is_symlink(), path
        assert path.relative_to(package) in shipped
        assert (ROOT / "configs" / f"{name}.yaml").read_bytes() == path.read_bytes()  # through the repository's link


def test_a_preset_name_reads_the_same_config_as_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # far from the repository: configs/uar.yaml is not a file here
    by_path = load_config(ROOT / "configs" / "uar.yaml")  # (cache paths resolve against the working directory)
    assert load_config("uar") == by_path
    assert load_config("configs/uar.yaml") == by_path
    mine = tmp_path / "uar"  # an existing file wins over a preset of the same name
    mine.write_text("head: {name: linear, inputs: [pooler]}\ndata: {caches: c}\n", encoding="utf-8")
    assert resolve_config("uar") == Path("uar")


def test_an_unknown_preset_is_one_line_listing_the_presets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "uarr", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "did you mean uar?" in err and "gapl" in err and "univfd" in err
    assert not (tmp_path / "run").exists()


