"""What `pip install .` puts on a user's path: one top-level name, `aigi`, whatever folders the user's project holds.

A wheel is built once from a copy of the sources (as pip does for `pip install .`), installed into a fresh virtual
environment whose only other packages are the dependencies, and run from a folder that holds its own `heads/`,
`cache/`, `common/`, `pipeline/`, `extractors/` and `fakes/` packages.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

from aigi.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SHADOWS = ("heads", "cache", "common", "pipeline", "extractors", "fakes")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building needs setuptools")


def package_folders() -> dict[str, Path]:
    """Import name -> folder of every package, as pyproject.toml maps them (subpackages under their parent's folder)."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    out = {}
    for name in PYPROJECT["tool"]["setuptools"]["packages"]:
        parent = max((p for p in mapping if name == p or name.startswith(p + ".")), key=len)
        out[name] = ROOT / mapping[parent] / Path(*name[len(parent) + 1 :].split("."))
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` would install, built from a copy of the tracked sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in sorted(set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
                           capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    (found,) = out.glob("aigi-*.whl")
    return found


def test_every_package_folder_is_listed_and_mapped() -> None:
    """A folder with an __init__.py that pyproject.toml does not list would be missing from the wheel."""
    folders = package_folders()
    assert all(path.is_dir() and (path / "__init__.py").is_file() for path in folders.values()), folders
    listed = set(folders.values())
    for top in set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        for init in (ROOT / top).rglob("__init__.py"):
            assert init.parent in listed, f"{init.parent.relative_to(ROOT)} is a package pyproject.toml does not list"


def test_the_wheel_installs_one_top_level_name_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"aigi", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    top_level = [n for n in names if n.endswith("top_level.txt")]
    assert not top_level or zipfile.ZipFile(wheel).read(top_level[0]).decode().split() == ["aigi"]
    for name, folder in package_folders().items():
        for module in folder.glob("*.py"):
            assert f"{name.replace('.', '/')}/{module.name}" in names, f"{module.relative_to(ROOT)} is not shipped"
    from aigi.pipeline.config import preset_names

    assert sorted(n for n in names if n.startswith("aigi/pipeline/presets/")) == [
        f"aigi/pipeline/presets/{p}.yaml" for p in preset_names()
    ]


def test_the_wheel_ships_the_small_fakes_weights_byte_for_byte(wheel: Path) -> None:
    shipped = sorted(p for p in (ROOT / "fakes" / "weights").rglob("*") if p.is_file())
    assert {p.name for p in shipped} >= {"training.json", "small_sr_x4.safetensors", "config.json"}
    with zipfile.ZipFile(wheel) as whl:
        for path in shipped:
            name = f"aigi/fakes/{path.relative_to(ROOT / 'fakes').as_posix()}"
            assert whl.read(name) == path.read_bytes(), name


def test_the_wheel_ships_the_zoo(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        assert whl.read("aigi/pipeline/zoo.yaml") == (ROOT / "pipeline" / "zoo.yaml").read_bytes()


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh venv with the wheel installed (its dependencies come from this interpreter's site-packages, as a
    path entry: nothing of this checkout is on that path) and a user's project folder with same-named packages."""
    tmp = tmp_path_factory.mktemp("fresh")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # every site directory of this interpreter (a venv may itself borrow its packages through a .pth entry)
    sites = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    Path(purelib, "dependencies.pth").write_text("\n".join(sites) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    project = tmp / "project"
    for name in SHADOWS:  # a research folder's own packages, named like aigi's folders
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"MINE = {name!r}\n")
    return {"python": python, "aigi": env_dir / "bin" / "aigi", "project": project}


def run_in(installed: dict[str, Path], argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, cwd=installed["project"], env=env, **kwargs)


API_SCRIPT = """
import sys
import numpy as np
import aigi
import heads, cache, common
assert all(m.MINE for m in (heads, cache, common)), "the project's own packages are importable beside aigi"
assert aigi.__file__.startswith(sys.prefix), aigi.__file__
rng = np.random.default_rng(0)
X = {"f": rng.normal(size=(64, 8)).astype("float32")}
y = (X["f"][:, 0] > 0).astype("int64")
head = aigi.build_head("linear", dims={"f": (8,)}, inputs=["f"])
aigi.fit(head, X, y, epochs=30, lr=0.1, batch_size=64)
scores = aigi.predict(head, X)
print("auc", aigi.evaluate(y, scores)["auc"])
print("heads", len(aigi.available_heads()))
print("uar", aigi.load_config("uar").head.inputs)
"""


def test_the_api_works_beside_same_named_packages(installed: dict[str, Path]) -> None:
    out = run_in(installed, [str(installed["python"]), "-c", API_SCRIPT])
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert float(lines["auc"]) > 0.95 and int(lines["heads"]) > 5 and lines["uar"] == "('probe',)"


def test_every_command_answers_beside_same_named_packages(installed: dict[str, Path]) -> None:
    out = run_in(installed, [str(installed["aigi"]), "--help"])
    assert out.returncode == 0 and all(name in out.stdout for name in COMMANDS.names()), out.stderr
    for name in COMMANDS.names():
        out = run_in(installed, [str(installed["aigi"]), name, "--help"])
        assert out.returncode == 0 and "usage: aigi" in out.stdout, (name, out.stderr[-800:])


def test_a_whole_flow_runs_from_the_installed_wheel(installed: dict[str, Path]) -> None:
    """index -> extract -> train -> eval -> predict with the installed console script, in the user's folder."""
    project = installed["project"]
    rng = np.random.default_rng(0)
    for label in ("0_real", "1_fake"):
        (project / "data" / "gen" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(project / "data" / "gen" / label / f"{i}.png")
    aigi = str(installed["aigi"])
    steps = [
        ["index", "data", "-o", "data/manifest.parquet", "--split-ratio", "train=0.5,test=0.5"],
        ["extract", "--manifest", "data/manifest.parquet", "--backbone", "timm:test_vit", "--random-weights",
         "--features", "pooler", "--cache", "features", "--batch-size", "4"],
        ["cache", "info", "features"],
        ["train", "linear_probe.yaml", "-o", "run"],
        ["eval", "run", "--split", "all", "-o", "report"],
        ["predict", "run", "--cache", "features", "-o", "scores.csv"],
    ]  # fmt: skip
    (project / "linear_probe.yaml").write_text(
        "head: {name: linear, inputs: [pooler]}\n"
        "fit: {epochs: 2, lr: 0.01, batch_size: 4}\n"
        "data: {caches: [features]}\n"
    )
    for argv in steps:
        out = run_in(installed, [aigi, *argv], timeout=300)
        assert out.returncode == 0, (argv, out.stdout[-500:], out.stderr[-1500:])
    assert (project / "report" / "metrics.json").is_file() and (project / "scores.csv").is_file()
    assert not any((project / name / "__pycache__").exists() for name in SHADOWS), "aigi imported a shadow package"


def test_the_shipped_small_fakes_run_from_the_installed_wheel(installed: dict[str, Path]) -> None:
    """`aigi fakes vae` and `aigi fakes sr` with the weights inside the installed package, in the user's folder."""
    pytest.importorskip("diffusers")
    pytest.importorskip("spandrel")
    project = installed["project"]
    folder = project / "small_fakes" / "gen" / "0_real"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    code = "from aigi.fakes import small; print(small.vae_path()); print(small.sr_path())"
    out = run_in(installed, [str(installed["python"]), "-c", code])
    assert out.returncode == 0, out.stderr
    vae, sr = out.stdout.split()
    assert Path(vae).resolve().is_relative_to(installed["python"].parents[1].resolve()), vae  # inside the venv
    assert (Path(vae) / "config.json").is_file() and Path(sr).is_file()
    aigi = str(installed["aigi"])
    manifest = "small_fakes/manifest.parquet"
    out = run_in(installed, [aigi, "index", "small_fakes/gen", "-o", manifest], timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    for kind, weights, extra in (("vae", vae, []), ("sr", sr, ["--scale", "4"])):
        argv = [aigi, "fakes", kind, "--manifest", manifest, "--weights", weights, "-o", "small_fakes/out",
                "--device", "cpu", *extra]  # fmt: skip
        out = run_in(installed, argv, timeout=300)
        assert out.returncode == 0, (kind, out.stderr[-1500:])
    out_dir = project / "small_fakes" / "out"
    made = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    sources = ("sr_small_sr_x4-x4", "vae_small_vae")  # fakes keep the reals' relative paths under 1_fake/
    assert made == [f"{s}/1_fake/gen/0_real/{i}.png" for s in sources for i in range(2)]
