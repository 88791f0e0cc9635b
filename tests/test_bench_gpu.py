"""`benchmarks/bench_gpu.py`: its device peak table, and its CPU smoke run (the GPU benchmark's code paths on tiny
models), so that the script a GPU owner runs once cannot rot untested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_gpu import BACKBONES, main, peak_tflops


def test_peaks_come_from_the_device_name_most_specific_first() -> None:
    names = {
        "NVIDIA H100 80GB HBM3": 989.4,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H100 NVL": 835.5,
        "NVIDIA H200": 989.4,
        "NVIDIA GH200 480GB": 989.4,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA A10": 125.0,
        "NVIDIA A10G": 70.0,
        "NVIDIA L40S": 362.1,
        "NVIDIA L4": 121.0,
        "NVIDIA GeForce RTX 4090": 165.2,
        "Tesla V100-SXM2-32GB": 125.0,
    }
    assert {name: peak_tflops(name) for name in names} == names
    assert peak_tflops("Some Future Accelerator") is None


@pytest.mark.slow
def test_cpu_smoke_runs_every_measurement_in_under_a_minute(tmp_path: Path, capsys) -> None:
    result = main(["--cpu-smoke", "--out", str(tmp_path / "smoke.json")])
    assert json.loads((tmp_path / "smoke.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["backbones"]) == set(BACKBONES) and result["images"] == 48
    for record in result["backbones"].values():
        assert record["gflop_per_image"] > 0 and record["bare"]["img_s"] > 0 and record["compiled"]["img_s"] > 0
        assert record["cpu_decode_img_s"] > 0
        for decode in ("cpu", "device"):
            run = record[f"extract_{decode}_decode"]
            assert run["rows"] == 48 and run["errors"] == 0 and run["img_s"] > 0 and run["ratio_to_bare"] > 0
    assert "| clip-l14 |" in capsys.readouterr().out
    assert result["seconds"] < 90  # under a minute on an idle 2-core machine; room for a loaded one
