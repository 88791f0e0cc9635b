"""`common.extras.require`: an optional package that cannot be imported becomes one `MissingExtra` naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aigi.cli import user_message
from aigi.common.extras import EXTRA_OF, MissingExtra, available, require


def test_a_missing_package_names_its_extra_and_is_a_user_error() -> None:
    with pytest.raises(MissingExtra) as info:
        require("aigi_no_such_package.sub", needed_for="the thing", extra="fakes")
    message = str(info.value)
    assert message == "the thing needs aigi_no_such_package, which is not installed: pip install 'aigi[fakes]'"
    assert isinstance(info.value, ImportError) and info.value.extra == "fakes"
    assert user_message(info.value) == message  # the CLI prints it as its one line
    assert not available("aigi_no_such_package")


def test_an_installed_package_whose_own_import_fails_says_why(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "aigi_half_installed").mkdir()
    (tmp_path / "aigi_half_installed" / "__init__.py").write_text("import aigi_its_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra, match=r"needs aigi_half_installed, which cannot be imported \(No module named "
                       r"'aigi_its_missing_dependency'\): pip install 'aigi\[plots\]'"):  # fmt: skip
        require("aigi_half_installed", needed_for="x", extra="plots")
    sys.modules.pop("aigi_half_installed", None)


def test_an_importable_package_is_returned_and_each_optional_package_has_an_extra() -> None:
    import tomllib

    assert require("json", needed_for="x", extra="plots") is sys.modules["json"]
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    extras = project["optional-dependencies"]
    for module, extra in EXTRA_OF.items():
        package = {"distributed": "dask[distributed]"}.get(module, module)
        assert any(req.startswith(package) for req in extras[extra]), (module, extra)
        assert module not in core  # the core does not install it
    assert set(extras["all"]) == {"aigi[fakes,dask,plots]"}
