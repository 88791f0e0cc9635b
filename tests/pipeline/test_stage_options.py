"""The stages' typed options: the run's defaults read in one place, mistakes caught when the options are made, and
the demo running `aigi` commands through the runner it is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigi.pipeline.ablate import AblateOptions
from aigi.pipeline.config import parse_config
from aigi.pipeline.demo.steps import SIZES, DemoOptions, DemoState, aigi
from aigi.pipeline.evaluate import EvalOptions

CONFIG = {
    "head": {"name": "linear", "inputs": ["f"]},
    "data": {"caches": "c", "test": "holdout"},
    "eval": {"by": "domain", "threshold": "val", "reals": "paired", "bootstrap": 7},
}


def test_eval_options_take_the_runs_values_where_none_was_given() -> None:
    cfg = parse_config(CONFIG)
    got = EvalOptions().with_defaults(cfg, stored_threshold=False)
    assert (got.split, got.by, got.threshold, got.reals, got.bootstrap) == ("holdout", "domain", "val", "paired", 7)
    stored = EvalOptions().with_defaults(cfg, stored_threshold=True)
    assert stored.threshold is None  # the head's stored threshold wins over the config's
    given = EvalOptions(split="all", by="source", threshold=0.3, reals="none", bootstrap=0, where=["view=orig"])
    assert given.with_defaults(cfg, stored_threshold=True) == given and given.where == ("view=orig",)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EvalOptions(bootstrap=-5), "--bootstrap -5"),
        (lambda: EvalOptions(threshold="often"), "--threshold"),
        (lambda: EvalOptions(reals="some"), "--reals some"),
        (lambda: AblateOptions(jobs=0), "--jobs must be >= 1"),
        (lambda: AblateOptions(jobs=2, workers=2), "not both"),
        (lambda: DemoOptions(head_input="pooler", features=("l1.mean",)), "--head-input"),
        (lambda: DemoOptions(backbone="clip-l14"), "--backbone-weights"),
    ],
)
def test_a_mistake_is_an_error_when_the_options_are_made(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_demo_runs_commands_through_the_runner_it_is_given(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    state = DemoState(tmp_path, SIZES["quick"], "timm:x", ("f",), "f", 0, run_command=lambda a: calls.append(a) or 0)
    aigi(state, ["eval", "run dir", "-o", "out"])
    assert calls == [["eval", "run dir", "-o", "out"]] and state.commands == ['aigi eval "run dir" -o out']
    failing = DemoState(tmp_path, SIZES["quick"], "timm:x", ("f",), "f", 0, run_command=lambda a: 2)
    with pytest.raises(RuntimeError, match="exited with code 2"):
        aigi(failing, ["train", "cfg.yaml"])
    with pytest.raises(TypeError, match="command runner"):
        aigi(DemoState(tmp_path, SIZES["quick"], "timm:x", ("f",), "f", 0), ["index"])
