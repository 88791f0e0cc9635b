"""One markdown table renderer for every report: its lines, and the tables of report.md and summary.md built by it."""

from __future__ import annotations

from aigi.pipeline.report import markdown, markdown_table


def test_markdown_table_lines_and_alignment() -> None:
    lines = markdown_table(["name", "n", "AUC"], [["a", 3, "91.00"], ["b", 10, "–"]], align="lrr")
    assert lines == ["| name | n | AUC |", "|---|---:|---:|", "| a | 3 | 91.00 |", "| b | 10 | – |"]
    assert markdown_table(["x", "y"], [])[1] == "|---|---|"  # left by default
    assert markdown_table(["x", "y"], [[1, 2]], align="r")[1] == "|---:|---|"


def test_report_md_table_is_rendered_by_it() -> None:
    row = {"n": 4, "acc": 0.75}
    metrics = {"by": "source", "threshold": 0.5, "groups": {"vae": row}, "mean": row}
    text = markdown(metrics, title="t")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].startswith("| Source | n | ACC |") and table[1].startswith("|---|---:|---:|")
    assert table[2].startswith("| vae | 4 | 75.00 |") and table[3].startswith("| **Mean** | **4** | **75.00** |")
