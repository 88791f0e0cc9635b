"""`aigi.common.registry.Registry`: the one name -> thing table of heads, extractors, fake kinds and commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aigi.common.registry import Registry


def test_exact_names_families_and_lazy_entries() -> None:
    reg: Registry[str] = Registry("widget", family_label="<model name>")
    reg.register("alpha", "A")

    @reg.register("beta")
    def beta() -> str:
        return "B"

    reg.register("timm:", "T", family=True)
    reg.register_lazy("json-dumps", "json:dumps")
    assert reg.names() == ["alpha", "beta", "json-dumps", "timm:<model name>"]
    assert reg.get("alpha") == "A" and reg.get("beta") is beta
    assert reg.find("timm:resnet50") == ("T", "resnet50") and reg.find("timm:") is None
    import json

    assert reg.get("json-dumps") is json.dumps and "json-dumps" in reg and "nothing" not in reg


def test_unknown_and_repeated_names_are_one_line_errors() -> None:
    reg: Registry[int] = Registry("head")
    reg.register("linear", 1)
    reg.register("gating", 2)
    with pytest.raises(ValueError, match=r"unknown head 'lineer'\. Did you mean linear\? Available: gating, linear"):
        reg.get("lineer")
    with pytest.raises(ValueError, match="unknown head 'zzz'. Available"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("linear", 3)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_lazy("gating", "json:dumps")


def test_a_package_registers_its_entries_on_first_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new entry is one new file of the package: nothing else imports it."""
    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from aigi.common.registry import Registry\nREG = Registry('kind', package=__name__)\n"
    )
    (pkg / "one.py").write_text("from plugins_for_test import REG\nREG.register('one', 1)\n")
    (pkg / "two.py").write_text("from plugins_for_test import REG\nREG.register('two', 2)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import plugins_for_test

        assert "plugins_for_test.one" not in sys.modules
        assert plugins_for_test.REG.names() == ["one", "two"] and plugins_for_test.REG.get("two") == 2
    finally:
        for name in [m for m in sys.modules if m.startswith("plugins_for_test")]:
            del sys.modules[name]


def test_items_of_a_package_registry_import_the_package_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`items()` as the first lookup lists the package's entries, as `names()` does."""
    pkg = tmp_path / "plugins_for_items"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from aigi.common.registry import Registry\nREG = Registry('kind', package=__name__)\n"
    )
    (pkg / "one.py").write_text("from plugins_for_items import REG\nREG.register('one', 1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import plugins_for_items

        assert plugins_for_items.REG.items() == [("one", 1)]
    finally:
        for name in [m for m in sys.modules if m.startswith("plugins_for_items")]:
            del sys.modules[name]
