"""`aigi.common.progress`: plain progress lines when the output is not a terminal (a log file shows work moving)."""

from __future__ import annotations

import logging
import time

import pytest

from aigi.common.progress import Progress, progress


def test_plain_lines_every_share_of_the_work_and_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aigi.progress")
    with progress(total=100, desc="extract x", unit="img", terminal=False, every_s=3600, every_fraction=0.25) as bar:
        for _ in range(10):
            bar.update(10)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" ")[2] for line in lines] == ["30/100", "60/100", "90/100", "100/100"], lines
    assert lines[0].startswith("extract x: 30/100 img (30.0%)") and "left" in lines[0]
    assert "left" not in lines[-1]


def test_time_based_lines_and_iteration(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aigi.progress")
    assert list(Progress(range(3), desc="steps", terminal=False, every_s=0.0)) == [0, 1, 2]
    assert [r.getMessage().split(" ")[1] for r in caplog.records] == ["1/3", "2/3", "3/3"]


def test_quiet_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aigi.progress")
    with progress(total=5, desc="x", terminal=False, every_s=0.0, quiet=True) as bar:
        bar.update(5)
    assert not caplog.records


def test_work_shorter_than_the_delay_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aigi.progress")
    with progress(total=4, desc="short", terminal=False, every_s=0.0, delay_s=3600) as bar:
        bar.update(4)
    assert not caplog.records
    with progress(total=4, desc="long", terminal=False, every_s=0.0, delay_s=0.05) as bar:
        bar.update(1)
        time.sleep(0.06)
        bar.update(3)
    assert [r.getMessage().split(" ")[1] for r in caplog.records] == ["4/4"]


def test_the_command_line_prints_progress_to_stderr_and_notes_to_stdout(capsys: pytest.CaptureFixture) -> None:
    from aigi.cli import configure_output

    configure_output()
    logging.getLogger("aigi.pipeline.something").info("a note")
    logging.getLogger("aigi.progress").info("work: 1/2")
    logging.getLogger("aigi.pipeline.something").warning("careful")
    out, err = capsys.readouterr()
    assert out == "a note\n" and err == "work: 1/2\ncareful\n"
