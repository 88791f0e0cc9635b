"""Stage timing: the process age counts time spent before the timing module was imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_process_age_includes_time_before_import_and_stages_add_up() -> None:
    code = (
        "import time; time.sleep(0.6)\n"
        "from pipeline.timing import Stages\n"
        "s = Stages(); time.sleep(0.3); s.mark('work')\n"
        "print(s.seconds['start'], s.seconds['work'], s.line())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    start, work, line = out.stdout.split(" ", 2)
    assert float(start) >= 0.55 and 0.3 <= float(work) < 5
    assert line.startswith("start ") and ", work " in line and "; total " in line
