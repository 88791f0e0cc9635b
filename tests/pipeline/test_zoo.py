"""`aigi zoo` and `aigi head pull`: the shipped zoo's pins, and pulls from a loopback hub (nothing reaches the
internet): a by-name download lands in the cache once, a file whose sha256 is not the pin and a pickle with code are
refused and nothing is imported, an entry without a pin needs --sha256 or --no-verify, offline works from the cache
and otherwise says the manual way, and a transfer cut short is never taken for a complete file."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from aigi import heads
from aigi.common.files import sha256_file
from aigi.pipeline.zoo import ZOO_FILE, read_zoo
from tests.conftest import shared_path
from tests.hub_server import FakeHub, go_offline, hub  # noqa: F401
from tests.pipeline.test_cli_errors import cli, user_error


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pth(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


PROBE = {"linear.weight": torch.arange(8.0).reshape(1, 8) / 10, "linear.bias": torch.tensor([0.5])}
ENTRY = {
    "detector": "UAR",
    "title": "a probe",
    "code": "https://example.org/uar",
    "importer": "uar",
    "backbone": "aim-v1-3b",
    "weights": "apple",
    "feature": "probe",
    "preprocess": "rich_patch",
    "licence": "none stated",
    "redistribute": False,
}


def write_zoo(path: Path, **entries: dict) -> Path:
    path.write_text(yaml.safe_dump(entries), encoding="utf-8")
    return path


def one_file(source: str, pin: str = "", role: str = "head") -> dict:
    return {**ENTRY, "files": [{"role": role, "source": source, "sha256": pin, "verified": "test"}]}


def test_shipped_zoo_is_well_formed_and_its_shared_files_match_their_pins() -> None:
    zoo = read_zoo()
    names = zoo.names()
    assert {"uar", "univfd", "gapl", "rine-2class", "omniaid-mirage"} <= set(names)
    for name in names:
        entry = zoo.get(name)
        assert entry.files and entry.licence and entry.code.startswith("https://")
        for f in entry.files:
            assert re.fullmatch(r"([0-9a-f]{64})?", f.sha256) and f.verified, (name, f)
            assert f.source.startswith(("hf-hub:", "https://")), (name, f)
            assert f.sha256 or f.verified.startswith("not pinned yet"), (name, f)
        assert entry.importer == "none" or all(f.sha256 for f in entry.files), name  # importable entries are pinned
    shipped = {
        "uar": ["uar_sample/uar_released_linear_head.pth"],
        "gapl": ["gapl/stage1.pt", "gapl/pca_3type_num64.pt"],
    }
    for name, files in shipped.items():
        pins = [f.sha256 for f in zoo.get(name).files]
        assert [sha256_file(shared_path(*f.split("/"))) for f in files] == pins


def test_zoo_lists_entries_and_aliases(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "zoo")
    assert code == 0 and "| uar | UAR | uar |" in out and "`91f136d0f2f8…`" in out and "not pinned yet" in out
    code, out, _ = cli(capsys, "zoo", "univfd", "--json")
    assert json.loads(out)["files"][0]["sha256"] == read_zoo().get("univfd").files[0].sha256
    code, out, _ = cli(capsys, "zoo", "--aliases")
    assert "| aim-v1-3b | apple | hf-hub:apple/AIM:aim_3b_5bimgs_attnprobe_backbone.pth" in out
    user_error(capsys, "zoo", "uarr", words=("unknown zoo entry 'uarr'", "Did you mean uar"))


def test_pull_by_hub_name_checks_the_pin_imports_and_downloads_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
) -> None:
    data = pth(PROBE)
    zoo = write_zoo(tmp_path / "zoo.yaml", probe=one_file("hf-hub:org/uar:head.pth", sha(data)))
    hub.add("org/uar", "head.pth", data)
    for out in ("a", "b"):
        code, text, err = cli(capsys, "head", "pull", "probe", "-o", tmp_path / out, "--zoo", zoo)
        assert code == 0, err
    assert hub.gets == {"/org/uar/resolve/main/head.pth": 1}  # the second pull read huggingface_hub's cache
    assert "matches the pin" in text and "aigi extract --backbone aim-v1-3b --weights apple" in text
    head, info = heads.load(tmp_path / "b")
    assert info["zoo"]["files"]["head"] == {"source": "hf-hub:org/uar:head.pth", "sha256": sha(data), "pinned": True}
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(head({"probe": x}).squeeze(-1), x @ PROBE["linear.weight"][0] + 0.5)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["head.json", "head.safetensors"]


def test_a_changed_file_is_refused_and_nothing_is_imported(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
) -> None:
    data = pth(PROBE)
    changed = pth({**PROBE, "linear.bias": torch.tensor([9.0])})
    url = hub.add_raw("uar/head.pth", changed)
    hub.add("org/uar", "head.pth", changed)
    zoo = write_zoo(
        tmp_path / "zoo.yaml", by_url=one_file(url, sha(data)), by_hub=one_file("hf-hub:org/uar:head.pth", sha(data))
    )
    for name in ("by_url", "by_hub"):
        user_error(
            capsys,
            "head",
            "pull",
            name,
            "-o",
            tmp_path / name,
            "--zoo",
            zoo,
            words=(
                f"has sha256 {sha(changed)}, not the pinned {sha(data)}",
                "nothing was imported",
                "aigi head import-uar head.pth",
            ),
        )
        assert not (tmp_path / name).exists()


def test_a_pickle_with_code_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
) -> None:
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    evil = pickle.dumps({"linear.weight": Evil()}, protocol=2)
    url = hub.add_raw("evil/head.pth", evil)
    zoo = write_zoo(tmp_path / "zoo.yaml", evil=one_file(url, sha(evil)))  # pinned: the pin does not make it safe
    user_error(
        capsys,
        "head",
        "pull",
        "evil",
        "-o",
        tmp_path / "out",
        "--zoo",
        zoo,
        words=("refused, it needs pickled code to load",),
    )
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_unpinned_file_needs_sha256_or_no_verify(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
) -> None:
    data = pth(PROBE)
    url = hub.add_raw("probe.pth", data)
    zoo = write_zoo(tmp_path / "zoo.yaml", probe=one_file(url))
    args = ("head", "pull", "probe", "--zoo", zoo, "-o")
    user_error(capsys, *args, tmp_path / "a", words=("no pinned sha256 for probe.pth", "--sha256 HEX", "--no-verify"))
    assert not hub.gets  # refused before any download
    user_error(capsys, *args, tmp_path / "b", "--sha256", "0" * 64, words=(f"not the pinned {'0' * 64}",))
    code, out, err = cli(capsys, *args, tmp_path / "c", "--sha256", sha(data))
    assert code == 0 and "matches the pin" in out, err
    code, out, err = cli(capsys, *args, tmp_path / "d", "--no-verify")
    assert code == 0 and "NOT checked (--no-verify)" in out, err
    assert heads.load(tmp_path / "d")[1]["zoo"]["files"]["head"]["pinned"] is False


def test_offline_uses_the_cache_and_otherwise_names_the_manual_way(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = pth(PROBE)
    hub.add("org/uar", "head.pth", data)
    url = hub.add_raw("uar/head.pth", data)
    zoo = write_zoo(
        tmp_path / "zoo.yaml",
        hub=one_file("hf-hub:org/uar:head.pth", sha(data)),
        url=one_file(url, sha(data)),
        absent=one_file("hf-hub:org/uar:other.pth", sha(data)),
    )
    assert cli(capsys, "head", "pull", "hub", "-o", tmp_path / "a", "--zoo", zoo)[0] == 0
    go_offline(monkeypatch)
    assert cli(capsys, "head", "pull", "hub", "-o", tmp_path / "b", "--zoo", zoo)[0] == 0  # from the cache
    user_error(
        capsys,
        "head",
        "pull",
        "url",
        "-o",
        tmp_path / "c",
        "--zoo",
        zoo,
        words=("HF_HUB_OFFLINE=1", f"fetch {url} by hand", "aigi head import-uar head.pth -o"),
    )
    user_error(
        capsys,
        "head",
        "pull",
        "absent",
        "-o",
        tmp_path / "d",
        "--zoo",
        zoo,
        words=("other.pth (not in the cache)", "unset HF_HUB_OFFLINE", "/org/uar/resolve/main/other.pth"),
    )
    assert sum(hub.gets.values()) == 1 and not (tmp_path / "c").exists()


def test_a_transfer_cut_short_is_not_taken_for_a_complete_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub import try_to_load_from_cache

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # huggingface_hub waits 1 s between its retries
    data = pth(PROBE)
    hub.add("org/uar", "head.pth", data)
    url = hub.add_raw("uar/head.pth", data)
    zoo = write_zoo(tmp_path / "zoo.yaml", hub=one_file("hf-hub:org/uar:head.pth", sha(data)), url=one_file(url))
    hub.cut_short |= {"/org/uar/resolve/main/head.pth", "/raw/uar/head.pth"}
    user_error(capsys, "head", "pull", "hub", "-o", tmp_path / "a", "--zoo", zoo, words=("could not get head.pth",))
    user_error(
        capsys,
        "head",
        "pull",
        "url",
        "-o",
        tmp_path / "b",
        "--zoo",
        zoo,
        "--no-verify",
        words=("could not download", "peer closed connection"),
    )  # no pin: the size check alone catches it
    assert try_to_load_from_cache("org/uar", "head.pth") is None  # nothing in the cache is taken for the file
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    hub.cut_short.clear()
    assert cli(capsys, "head", "pull", "hub", "-o", tmp_path / "a", "--zoo", zoo)[0] == 0
    assert Path(try_to_load_from_cache("org/uar", "head.pth")).read_bytes() == data


@pytest.mark.parametrize("name", ["uar", "gapl"])
def test_shipped_entries_pull_the_released_files_with_their_pins(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    hub: FakeHub,  # noqa: F811
    name: str,
) -> None:
    """The shipped entries, their sources served from the released files in ../shared/data."""
    local = {"uar": ["uar_sample/uar_released_linear_head.pth"], "gapl": ["gapl/stage1.pt", "gapl/pca_3type_num64.pt"]}
    entries = yaml.safe_load(ZOO_FILE.read_text())
    for f, rel in zip(entries[name]["files"], local[name]):
        f["source"] = hub.add_raw(rel, shared_path(*rel.split("/")).read_bytes())
    zoo = write_zoo(tmp_path / "zoo.yaml", **{name: entries[name]})
    code, out, err = cli(capsys, "head", "pull", name, "-o", tmp_path / "h", "--zoo", zoo)
    assert code == 0, err
    head, info = heads.load(tmp_path / "h")
    assert info["zoo"]["name"] == name and all(f["pinned"] for f in info["zoo"]["files"].values())
    assert info["name"] == {"uar": "linear", "gapl": "prototype"}[name]
