"""`aigi cache repair` never loses an intact row: damaged index entries and cache.json are rebuilt from the shards,
what leaves the cache moves to its quarantine folder, a repair killed at any point then re-run keeps every intact row,
and verify / repair / reading never hang or end in a traceback (issue 28, cases 1, 13 and 15)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aigi import cache
from aigi.cli import main
from tests.cache.helpers import FEATURES, SPEC, as_stored, rows
from tests.cache.test_integrity import dataset_offset, flip

N, SHARD = 12, 4


def make(path: Path, fmt: str = "h5") -> tuple[pd.DataFrame, dict]:
    meta, feats = rows(N)
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, fmt=fmt, shard_size=SHARD) as w:
        w.append(meta, feats)
    return meta, feats


def shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "shards").iterdir()) if p.suffix == ".h5"}


def edit_index(path: Path, change) -> None:
    body = json.loads((path / "index.json").read_text())
    change(body["shards"])
    (path / "index.json").write_text(json.dumps(body))


def repaired(path: Path, capsys: pytest.CaptureFixture) -> str:
    """`aigi cache repair PATH` exits 0 without a traceback; returns its output."""
    code = main(["cache", "repair", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err, err
    return out


def refused(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> str:
    """`aigi ARGV` exits 2 with one line naming `words`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("aigi ")]
    assert code == 2 and "Traceback" not in out + err and len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def all_rows_intact(path: Path, meta: pd.DataFrame, feats: dict) -> None:
    assert cache.verify(path)["rows"] == N
    got = cache.open(path).load()
    order = np.argsort(got.meta["image_id"].to_numpy())
    ref = np.argsort(meta["image_id"].to_numpy())
    for name in FEATURES:
        assert np.array_equal(got.features[name][order], as_stored(feats[name])[ref])


# ------------------------------------------------------------------------------------------ damaged index entries


def test_a_bogus_entry_naming_a_path_outside_is_dropped_and_no_shard_is_touched(tmp_path, capsys):
    meta, feats = make(tmp_path / "c")
    elsewhere = tmp_path / "c" / "elsewhere" / "00000.h5"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"someone else's file")
    victim = tmp_path / "victim.txt"
    victim.write_text("not the cache's")
    before = shard_bytes(tmp_path / "c")

    def bogus(shards: dict) -> None:
        shards["../elsewhere/00000.h5"] = shards["00000.h5"]
        shards[str(victim)] = shards["00001.h5"]
        shards["."] = shards["00002.h5"]

    edit_index(tmp_path / "c", bogus)
    refused(["cache", "verify", tmp_path / "c"], capsys, "not a shard file name", "aigi cache repair")
    out = repaired(tmp_path / "c", capsys)
    assert "damaged index entries dropped" in out and "ok: 12 rows in 3 shard(s)" in out
    assert shard_bytes(tmp_path / "c") == before
    assert elsewhere.read_bytes() == b"someone else's file" and victim.read_text() == "not the cache's"
    all_rows_intact(tmp_path / "c", meta, feats)
    assert "nothing to repair" in repaired(tmp_path / "c", capsys)  # converged


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s["00001.h5"].update(rows="100"),  # a count written as text
        lambda s: s["00001.h5"].pop("rows"),  # no rows at all
        lambda s: s.update({"00001.h5": 5}),  # a record that is an int
        lambda s: s["00001.h5"].update(sha256=None),
        lambda s: s["00001.h5"].update(rows=5),  # a wrong count; the bytes still match the digest
    ],
    ids=["rows-text", "no-rows", "int-record", "no-digest", "wrong-count"],
)
def test_a_damaged_record_of_an_intact_shard_keeps_its_rows(tmp_path, capsys, damage):
    meta, feats = make(tmp_path / "c")
    before = shard_bytes(tmp_path / "c")
    edit_index(tmp_path / "c", damage)
    refused(["cache", "verify", tmp_path / "c"], capsys, "00001.h5", "aigi cache repair")
    refused(["cache", "info", tmp_path / "c"], capsys, "00001.h5")  # reading (train, eval) says so too
    repaired(tmp_path / "c", capsys)
    assert shard_bytes(tmp_path / "c") == before
    all_rows_intact(tmp_path / "c", meta, feats)


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_an_empty_index_adopts_every_intact_shard(tmp_path, capsys, fmt):
    meta, feats = make(tmp_path / "c", fmt=fmt)
    (tmp_path / "c" / "index.json").write_text('{"shards": {}}')
    out = repaired(tmp_path / "c", capsys)
    assert "adopted 3 intact shard(s)" in out
    all_rows_intact(tmp_path / "c", meta, feats)
    assert not (tmp_path / "c" / "quarantine").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["binary", "list", "folder", "fifo", "symlink"])
def test_an_index_that_cannot_be_read_is_rebuilt_from_the_shards(tmp_path, capsys, kind):
    meta, feats = make(tmp_path / "c")
    index = tmp_path / "c" / "index.json"
    index.unlink()
    if kind == "binary":
        index.write_bytes(bytes(range(256)))
    elif kind == "list":
        index.write_text("[1, 2]")
    elif kind == "folder":
        index.mkdir()
    elif kind == "fifo":
        os.mkfifo(index)
    else:
        index.symlink_to(tmp_path / "secret.txt")
        (tmp_path / "secret.txt").write_text("outside the cache")
    refused(["cache", "verify", tmp_path / "c"], capsys, "index.json", "aigi cache repair")
    out = repaired(tmp_path / "c", capsys)
    assert "rebuilt: index.json" in out and "adopted 3" in out
    all_rows_intact(tmp_path / "c", meta, feats)
    if kind == "symlink":
        assert (tmp_path / "secret.txt").read_text() == "outside the cache"


@pytest.mark.parametrize("damage", ["features-list", "not-json", "missing"])
def test_a_damaged_cache_json_is_rebuilt_from_the_header_the_shards_store(tmp_path, capsys, damage):
    meta, feats = make(tmp_path / "c")
    header = tmp_path / "c" / "cache.json"
    if damage == "features-list":
        header.write_text(json.dumps({**json.loads(header.read_text()), "features": ["l3.cls"]}))
    elif damage == "not-json":
        header.write_text("{")
    else:
        header.unlink()
    refused(["cache", "verify", tmp_path / "c"], capsys, "cache.json")
    out = repaired(tmp_path / "c", capsys)
    assert "rebuilt: cache.json" in out
    all_rows_intact(tmp_path / "c", meta, feats)


# ------------------------------------------------------------------------------------------ shards taken out


def test_a_changed_shard_goes_to_quarantine_not_away(tmp_path, capsys):
    make(tmp_path / "c")
    shard = tmp_path / "c" / "shards" / "00001.h5"
    flip(shard, dataset_offset(shard, "features/l3.cls") + 3)
    changed = shard.read_bytes()
    out = repaired(tmp_path / "c", capsys)
    assert "dropped: 00001.h5" in out and "not deleted" in out and "ok: 8 rows" in out
    kept = list((tmp_path / "c" / "quarantine").rglob("00001.h5"))
    assert len(kept) == 1 and kept[0].read_bytes() == changed and kept[0].with_name("00001.errors.json").is_file()


def test_a_shard_it_may_not_read_is_left_alone(tmp_path, capsys, monkeypatch):
    meta, feats = make(tmp_path / "c")
    before = shard_bytes(tmp_path / "c")
    from aigi.cache import tools

    real = tools.file_digest

    def denied(path):
        if Path(path).name == "00001.h5":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(tools, "file_digest", denied)
    refused(["cache", "repair", tmp_path / "c"], capsys, "00001.h5", "permissions")
    assert shard_bytes(tmp_path / "c") == before and not (tmp_path / "c" / "quarantine").exists()
    monkeypatch.undo()
    all_rows_intact(tmp_path / "c", meta, feats)


@pytest.mark.timeout(60)
def test_a_fifo_among_the_shards_neither_blocks_nor_stays(tmp_path, capsys):
    meta, feats = make(tmp_path / "c")
    os.mkfifo(tmp_path / "c" / "shards" / "00007.h5")
    edit_index(tmp_path / "c", lambda s: s.update({"00007.h5": s["00000.h5"]}))
    refused(["cache", "verify", tmp_path / "c"], capsys, "00007.h5", "not a regular file")
    repaired(tmp_path / "c", capsys)
    assert not (tmp_path / "c" / "shards" / "00007.h5").exists()
    all_rows_intact(tmp_path / "c", meta, feats)


def test_a_shard_that_links_outside_is_moved_as_a_link_and_its_target_untouched(tmp_path, capsys):
    meta, feats = make(tmp_path / "c")
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"someone else's data")
    (tmp_path / "c" / "shards" / "00009.h5").symlink_to(outside)
    out = repaired(tmp_path / "c", capsys)
    assert "removed 1 stray file(s)" in out
    assert outside.read_bytes() == b"someone else's data"
    moved = list((tmp_path / "c" / "quarantine").rglob("00009.h5"))
    assert len(moved) == 1 and moved[0].is_symlink()
    all_rows_intact(tmp_path / "c", meta, feats)


def test_a_copied_shard_of_the_same_rows_is_taken_out_a_new_one_is_adopted(tmp_path, capsys):
    meta, feats = make(tmp_path / "c")
    shards = tmp_path / "c" / "shards"
    shutil.copy(shards / "00001.h5", shards / "00011.h5")  # the same rows again: nothing to adopt
    extra, extra_feats = rows(3, start=100)
    cache.CacheWriter(tmp_path / "c", spec=SPEC, features=FEATURES).write_shard(12, extra, extra_feats)
    edit_index(tmp_path / "c", lambda s: s.pop("00012.h5"))  # an interrupted commit of new rows
    out = repaired(tmp_path / "c", capsys)
    assert "adopted 1 intact shard(s)" in out and "removed 1 stray file(s)" in out
    assert cache.verify(tmp_path / "c")["rows"] == N + 3


# ------------------------------------------------------------------------------------------ killed, then re-run


def duplicated_cache(path: Path) -> tuple[set, dict]:
    """4 shards of 4 rows, 2 more each repeating 2 earlier rows beside 2 new ones, one shard left out of the index:
    every key's features as written (the rows repair must keep)."""
    meta, feats = rows(20)
    with cache.CacheWriter(path, spec=SPEC, features=FEATURES, shard_size=4) as w:
        w.append(meta.iloc[:16], {k: v[:16] for k, v in feats.items()})
    writer = cache.CacheWriter(path, spec=SPEC, features=FEATURES)
    for j in range(2):
        take = [2 * j, 2 * j + 1, 16 + 2 * j, 17 + 2 * j]
        writer.write_shard(20 + j, meta.iloc[take], {k: v[take] for k, v in feats.items()})
    edit_index(path, lambda s: s.pop("00003.h5"))
    truth = {iid: as_stored(feats["l3.cls"][i]) for i, iid in enumerate(meta["image_id"])}
    return set(meta["image_id"]), truth


def repair_killed_after(path: Path, event: int) -> bool:
    """Run `cache.repair(path)` in a forked process that SIGKILLs itself right after its `event`-th change on disk
    (an index write or a rename); True when it was killed, False when it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: count the changes, die at the chosen one
        try:
            from aigi.cache import tools

            seen = [0]

            def counted(fn):
                def call(*args, **kwargs):
                    out = fn(*args, **kwargs)
                    seen[0] += 1
                    if seen[0] == event:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return out

                return call

            tools.write_index = counted(tools.write_index)
            tools.os.replace = counted(os.replace)
            tools.repair(path)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


@pytest.mark.slow
def test_a_repair_killed_at_any_step_then_re_run_keeps_every_intact_row(tmp_path):
    keys, truth = duplicated_cache(tmp_path / "template")
    event, killed = 1, True
    while killed:
        work = tmp_path / f"run{event}"
        shutil.copytree(tmp_path / "template", work)
        killed = repair_killed_after(work, event)
        cache.repair(work)  # the re-run
        assert cache.verify(work)["rows"] == len(keys), f"killed after change {event}"
        got = cache.open(work).load()
        assert set(got.meta["image_id"]) == keys
        for iid, vec in zip(got.meta["image_id"], got.features["l3.cls"]):
            assert np.array_equal(vec, truth[iid]), f"killed after change {event}: {iid} differs"
        shutil.rmtree(work)
        event += 1
    assert event > 10  # the repair makes many changes on disk: each was a kill point
