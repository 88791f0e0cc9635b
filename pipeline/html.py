"""The HTML reports: one self-contained `report.html` (tables, plots and thumbnails inlined as base64 PNG, a few lines
of script to sort the gallery) beside `report.md`, for `aigi eval` and `aigi predict --report`."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

THUMB_PX = 160
MAX_GALLERY = 2000  # thumbnails drawn; the table below lists every row
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d1d1f;max-width:1400px}
h1{font-size:22px;margin:0 0 8px} h2{font-size:17px;margin:22px 0 8px}
ul.ctx{margin:0 0 8px;padding-left:18px;font-size:13px;color:#444}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #d0d0d5;padding:3px 7px;text-align:right} th{background:#f2f2f5}
td:first-child,th:first-child{text-align:left} tr.mean td{font-weight:600;background:#fafafa}
.plots img{max-width:640px;margin:6px 12px 6px 0;border:1px solid #e3e3e8;vertical-align:top}
.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{width:172px;border:2px solid #ccc;border-radius:6px;padding:5px;font-size:12px;background:#fff}
.card img{width:160px;height:160px;object-fit:contain;background:#eee;display:block}
.card .path{overflow-wrap:anywhere;color:#444;height:2.6em;overflow:hidden}
.card.fake{border-color:#d33} .card.real{border-color:#2a8} .card.unsure{border-color:#e9a000;border-style:dashed}
.card.error{border-color:#888;opacity:.7}
.badge{display:inline-block;padding:1px 6px;border-radius:9px;color:#fff;font-weight:600}
.badge.fake{background:#d33} .badge.real{background:#2a8}
.badge.unsure{background:#e9a000} .badge.error{background:#888}
.bar{height:6px;background:#eee;margin:3px 0} .bar div{height:6px;background:#d33}
button{margin-right:6px} .warn{background:#fff4d6;border:1px solid #e9a000;padding:6px 10px;margin:8px 0}
"""
SORT_SCRIPT = """
function sortGallery(key, dir){
  const g=document.getElementById('gallery'); const cards=[...g.children];
  cards.sort((a,b)=>{const x=a.dataset[key], y=b.dataset[key];
    const nx=parseFloat(x), ny=parseFloat(y);
    if(!isNaN(nx)||!isNaN(ny)){return dir*((isNaN(nx)?-1:nx)-(isNaN(ny)?-1:ny));}
    return dir*x.localeCompare(y);});
  cards.forEach(c=>g.appendChild(c));
}
"""


def png_data(path_or_bytes: Path | bytes) -> str:
    """A `data:` URI of a PNG file or of PNG bytes."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(path: Path, px: int = THUMB_PX) -> str | None:
    """A `data:` URI of a PNG thumbnail (longest side `px`) of an image file; None when it cannot be read."""
    from aigi.extractors.images import ImageLoadError, load_image

    try:
        img = load_image(path)
    except (ImageLoadError, OSError, ValueError):
        return None
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return png_data(buf.getvalue())


def _page(title: str, body: Sequence[str], *, script: str = "") -> str:
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    tail = f"<script>{script}</script>" if script else ""
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(body) + f"\n{tail}</body></html>\n"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * float(value):.2f}"


def _context(context: Sequence[str]) -> str:
    return "<ul class='ctx'>" + "".join(f"<li>{html.escape(c).replace('`', '')}</li>" for c in context) + "</ul>"


def eval_html(
    metrics: Mapping[str, Any],
    *,
    columns: Sequence[tuple[str, str]],
    title: str,
    context: Sequence[str],
    text: str = "",
    pngs: Sequence[Path] = (),
) -> str:
    """`aigi eval`'s report.html: the settings, the metrics table (`columns`: (metric key, label), in percent;
    groups, mean over groups, pooled) and the plots, all in one file."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    rows = [(name, row, "") for name, row in metrics["groups"].items()]
    rows += [("Mean (over groups)", metrics["mean"], "mean")]
    if "pooled" in metrics:
        rows += [("Pooled (all rows)", metrics["pooled"], "mean")]
    body_rows = "".join(
        f"<tr class='{cls}'><td>{html.escape(str(name))}</td>"
        + "".join(f"<td>{row.get(k) if k == 'n' else _pct(row.get(k))}</td>" for k, _ in columns)
        + "</tr>"
        for name, row, cls in rows
    )
    notes = [f"<li>{html.escape(str(n))}: {html.escape(r['note'])}</li>" for n, r, _ in rows if r.get("note")]
    by = html.escape(str(metrics.get("by", "group")))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _context(context),
        f"<p>Threshold {metrics['threshold']:.4g}: a row is called fake when its P(fake) &ge; the threshold. Values "
        "in percent; ranking metrics (AP, AUC, TPR@FPR, EER, oracle ACC) rank rows by their logit.</p>",
        f"<h2>Metrics by {by}</h2>",
        f"<table><tr><th>{by}</th>{head}</tr>{body_rows}</table>",
        f"<ul class='ctx'>{''.join(notes)}</ul>" if notes else "",
    ]
    if pngs:
        imgs = "".join(f"<img alt='{html.escape(p.stem)}' src='{png_data(p)}'>" for p in pngs)
        body += ["<h2>Plots</h2>", f"<div class='plots'>{imgs}</div>"]
    return _page(title, body)


def predict_html(table: pd.DataFrame, *, title: str, context: Sequence[str], root: Path | None = None) -> str:
    """`aigi predict --report`'s report.html: the counts, a gallery of thumbnails sortable by P(fake) (verdicts as
    colours, `unsure` dashed), and the table of every row."""
    counts = table["verdict"].replace("", "error").value_counts()
    summary = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("fake", "real", "unsure", "error") if v in counts)
    cards = []
    for row in table.head(MAX_GALLERY).itertuples(index=False):
        verdict = row.verdict or "error"
        p = getattr(row, "p_fake", float("nan"))
        path = Path(str(row.path))
        src = thumbnail(path if root is None or path.is_absolute() else root / path)
        img = f"<img alt='' src='{src}'>" if src else "<img alt='unreadable'>"
        score = "–" if p != p else f"{float(p):.4f}"
        width = 0 if p != p else 100 * float(p)
        note = f"<div>{html.escape(str(row.error))}</div>" if getattr(row, "error", "") else ""
        cards.append(
            f"<div class='card {verdict}' data-p='{'' if p != p else float(p)}' data-path='{html.escape(str(path))}'>"
            f"{img}<div class='path'>{html.escape(str(path))}</div>"
            f"<div class='bar'><div style='width:{width:.1f}%'></div></div>"
            f"P(fake) {score} <span class='badge {verdict}'>{verdict}</span>{note}</div>"
        )
    shown = [c for c in ("path", "logit", "p_fake", "verdict", "error") if c in table.columns]
    listing = table[shown].to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–", border=0)
    body = [
        f"<h1>{html.escape(title)}</h1>",
        _context(context),
        f"<p><b>{len(table)} image(s)</b>: {html.escape(summary)}. Cards are coloured by verdict: red fake, green "
        "real, dashed amber <b>unsure</b> (inside the head's abstain band), grey not scored.</p>",
        "<p><button onclick=\"sortGallery('p',-1)\">P(fake) high → low</button>"
        "<button onclick=\"sortGallery('p',1)\">P(fake) low → high</button>"
        "<button onclick=\"sortGallery('path',1)\">path</button></p>",
        f"<div class='gallery' id='gallery'>{''.join(cards)}</div>",
        "<h2>Every row</h2>",
        listing,
    ]
    return _page(title, body, script=SORT_SCRIPT)
