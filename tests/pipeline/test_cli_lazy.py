"""`aigi CMD` imports only the module of CMD: the command map must match what the modules register."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aigi import cli

ROOT = Path(__file__).resolve().parents[2]


def test_command_map_matches_the_registered_commands() -> None:
    full = cli.build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS.names())
    for command in cli.COMMANDS.names():
        only = next(a for a in cli.build_parser(command)._actions if a.dest == "command")
        assert set(only.choices) == {command}


def test_a_command_does_not_import_the_other_stages() -> None:
    code = (
        "import sys; from aigi import cli; cli.build_parser('import');"
        "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('aigi.pipeline.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(out.stdout)
    assert "aigi.pipeline.importers" in loaded
    assert not {"aigi.pipeline.train", "aigi.pipeline.demo", "aigi.pipeline.extract", "aigi.pipeline.ablate"} & set(
        loaded
    )
