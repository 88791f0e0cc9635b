"""Run configs: presets, strict keys with close matches, `--set` / `--cache` overrides, resolved round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aigi.pipeline.config import RunConfig, apply_overrides, cache_aliases, load_config, parse_value, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


BASE = {"head": {"name": "linear", "inputs": ["probe"]}, "data": {"caches": "features/uar"}}


def test_uar_preset_is_uars_protocol() -> None:
    cfg = load_config(CONFIGS / "uar.yaml")
    assert cfg.head.name == "linear" and cfg.head.inputs == ("probe",)
    fit = cfg.fit
    assert (fit["optimizer"], fit["lr"], fit["batch_size"], fit["epochs"]) == ("adam", 1e-3, 32, 1)
    assert (fit["weight_decay"], fit["schedule"], fit["balance"]) == (0.0, "constant", False)
    assert cfg.data.where == {"view": "orig"} and cfg.data.split_column == "split"


def test_univfd_preset_reads_clip_proj() -> None:
    cfg = load_config(CONFIGS / "univfd.yaml")
    assert cfg.head.name == "linear" and cfg.head.inputs == ("proj",)
    assert cfg.fit["optimizer"] == "adam" and cfg.fit["batch_size"] == 256


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fit.lrr=1", "did you mean 'fit.lr'"),
        ("data.cahces=x", "did you mean 'data.caches'"),
        ("evall.by=x", "did you mean 'eval'"),
        ("eval.thresold=0.3", "did you mean 'eval.threshold'"),
        ("fit.epochs=two", "fit.epochs must be int"),
        ("fit.lr=fast", "fit.lr must be float"),
        ("data.val_fraction=1.5", "val_fraction must be in"),
        ("eval.reals=some", "eval.reals must be one of"),
        ("eval.threshold=2", "threshold must be in"),
        ("fit.optimizer=sgd", "optimizer"),
    ],
)
def test_bad_keys_and_values_are_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "uar.yaml", overrides=[override])


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "data": {"caches": "c", "split_colum": "split"}})
    with pytest.raises(ValueError, match=r"run.yaml: unknown key 'data.split_colum'; did you mean 'data.split_column'"):
        load_config(path)
    with pytest.raises(ValueError, match="head.inputs"):
        load_config(_write(tmp_path, {"head": {"name": "linear"}}))


def test_set_overrides_are_dotted_and_yaml_parsed() -> None:
    assert parse_value("1e-4") == 1e-4  # YAML 1.1 would keep this a string
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("true") is True and parse_value("null") is None
    cfg = load_config(
        CONFIGS / "uar.yaml",
        overrides=[
            "fit.lr=1e-4",
            "fit.epochs=3",
            "head.inputs=[l23.cls]",
            "data.where.view=jpeg:75",
            "eval.threshold=val",
            "fit.balance=true",
        ],
    )
    assert cfg.fit["lr"] == 1e-4 and cfg.fit["epochs"] == 3 and cfg.fit["balance"] is True
    assert cfg.head.inputs == ("l23.cls",) and cfg.data.where == {"view": "jpeg:75"} and cfg.eval.threshold == "val"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["fit.lr"])


def test_cache_paths_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "uar.yaml")
    assert cfg.data.caches == {"uar": str(tmp_path / "features" / "uar")}
    one = load_config(CONFIGS / "uar.yaml", caches=["other/dir"])
    assert one.data.caches == {"uar": str(tmp_path / "other" / "dir")}
    named = load_config(CONFIGS / "uar.yaml", caches=["clip=c.h5", "uar=u"])
    assert named.data.caches == {"uar": str(tmp_path / "u"), "clip": str(tmp_path / "c.h5")}
    assert cache_aliases(["a/x", "b/x", "y=z"]) == {"x": "a/x", "x2": "b/x", "y": "z"}
    with pytest.raises(ValueError, match="ALIAS=PATH"):
        load_config(CONFIGS / "uar.yaml", caches=["clip=c", "uar=u", "p1", "p2"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "uar.yaml", overrides=["fit.lr=0.01", "data.where.source=[a, b]"])
    path = save_config(cfg, tmp_path / "run")
    again = load_config(path)
    assert isinstance(again, RunConfig) and again == cfg
    saved = yaml.safe_load(path.read_text())
    assert saved["fit"]["eval_batch_size"] == cfg.fit["eval_batch_size"]  # defaults are written out
    assert Path(saved["data"]["caches"]["uar"]).is_absolute()


def test_quoted_strings_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "quoted.yaml"
    path.write_text('head: {name: router, inputs: [probe], domains: ["0", "1", "2"], artifact: ["1e-3"]}\n')
    cfg = load_config(path)
    assert cfg.head.params["domains"] == ["0", "1", "2"] and cfg.head.params["artifact"] == ["1e-3"]
    assert load_config(save_config(cfg, tmp_path / "run")) == cfg  # written and read back: still strings
    set_cfg = load_config(_write(tmp_path, BASE), overrides=["head.name=router", "head.domains=['7', '8']"])
    assert set_cfg.head.params["domains"] == ["7", "8"]
    assert parse_value("'1e-4'") == "1e-4" and parse_value("1e-4") == 1e-4  # quoted: a string; bare: a number


def test_head_parameter_typo_is_caught_when_the_config_is_read(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "head": {"name": "mlp", "inputs": ["probe"], "hiden": 8}})
    with pytest.raises(ValueError, match=r"unknown key 'head.hiden'; did you mean 'head.hidden'"):
        load_config(path)
    with pytest.raises(ValueError, match="head.dropout must be float"):
        load_config(_write(tmp_path, BASE), overrides=["head.name=mlp", "head.dropout=lots"])
    with pytest.raises(ValueError, match="unknown head 'linaer'"):
        load_config(_write(tmp_path, BASE), overrides=["head.name=linaer"])


@pytest.mark.parametrize(
    ("preset", "published"),
    [
        # OmniAID's config_omniaid_mirage_paper.json / config_omniaid_genimage_paper.json (num_experts counts the
        # artifact expert; moe_router_hidden_dim, moe_top_k, rank_per_expert, moe_lambda_balance, _gating_cls)
        ("omniaid_mirage", {"experts": 6, "router_hidden": 256, "top_k": 2, "rank": 8, "balance": 1e-3, "cls": 0.1}),
        ("omniaid_genimage", {"experts": 3, "router_hidden": 64, "top_k": 1, "rank": 4, "balance": 0.1, "cls": 0.1}),
    ],
)
def test_omniaid_presets_carry_one_published_config_each(preset: str, published: dict) -> None:
    head = load_config(CONFIGS / f"{preset}.yaml").head.params
    ours = {
        "experts": len(head["domains"]) + 1,
        "router_hidden": head["router_hidden"],
        "top_k": head["top_k"],
        "rank": head["rank"],
        "balance": head["balance_weight"],
        "cls": head["domain_weight"],
    }
    assert ours == published
