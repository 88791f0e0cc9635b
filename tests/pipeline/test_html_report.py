"""report.html of `aigi eval` and `aigi predict --report`: one self-contained file, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aigi.pipeline.html import eval_html
from aigi.pipeline.report import report_columns, write_predict_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _predictions(folder: Path) -> pd.DataFrame:
    """Six images with scores, one per verdict kind at least, one unreadable."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (p, verdict) in enumerate([(0.97, "fake"), (0.08, "real"), (0.55, "unsure"), (0.71, "fake"),
                                      (0.31, "unsure"), (0.02, "real")]):  # fmt: skip
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "logit": np.log(p / (1 - p)), "p_fake": p, "verdict": verdict, "error": ""})
    (folder / "bad.jpg").write_bytes(b"not an image")
    rows.append({"path": str(folder / "bad.jpg"), "logit": np.nan, "p_fake": np.nan, "verdict": "",
                 "error": "not an image"})  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["notes"] = ["runs/linear is a demo head, not a detector"]
    return table


def test_predict_report_is_one_self_contained_file_with_a_sortable_gallery(tmp_path: Path) -> None:
    files = write_predict_report(tmp_path / "rep", _predictions(tmp_path), head="runs/linear")
    html = files["report.html"].read_text()
    assert set(files) == {"scores.csv", "report.md", "report.html"}
    assert html.count("data:image/png;base64,") == 6  # the readable images, inlined
    assert not re.search(r"(src|href)=['\"](?!data:)", html)  # nothing fetched from elsewhere
    assert html.count("class='card unsure'") == 2 and "class='card error'" in html and "sortGallery('p',-1)" in html
    assert "demo head, not a detector" in html and "demo head, not a detector" in files["report.md"].read_text()


def test_eval_report_inlines_its_plots(tmp_path: Path) -> None:
    png = tmp_path / "roc.png"
    Image.new("RGB", (20, 10), "white").save(png)
    metrics = {"groups": {"vae": {"n": 4, "acc": 0.75, "note": "few"}}, "mean": {"n": 4, "acc": 0.75},
               "pooled": {"n": 4, "acc": 0.75}, "threshold": 0.5, "by": "source"}  # fmt: skip
    columns = report_columns(metrics)
    html = eval_html(metrics, columns=columns, title="Evaluation of r", context=["head `linear`"], pngs=[png])
    assert "Pooled (all rows)" in html and "Mean (over groups)" in html and "<td>75.00</td>" in html
    assert html.count("data:image/png;base64,") == 1 and "vae: few" in html


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_predict_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    files = write_predict_report(tmp_path / "rep", _predictions(tmp_path), head="runs/linear")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
           "--window-size=1200,900", files["report.html"].as_uri()]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (900, 1200) and pixels.std() > 20  # drawn, not blank
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)  # the fake cards' borders
    amber = (pixels[..., 0] > 200) & (pixels[..., 1] > 130) & (pixels[..., 1] < 190) & (pixels[..., 2] < 60)
    assert red.sum() > 200 and amber.sum() > 100
