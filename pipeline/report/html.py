"""The report page: one static HTML file, inline CSS, no JavaScript, relative image paths.

Element ids (stable; tests and users rely on them): summary, legend, overlay-grid,
lowest-confidence, highest-confidence, class-stats, class-share-chart, confidence-histogram,
failures, failures-table, evaluation, eval-summary, iou-chart, sweep-chart, unseen-classes.

Order: what a person looks at first (summary, samples, confidence, failures) before the reference
material (legend, class table). Each sample is image | labels | confidence side by side; a click
opens the larger view. Only classes that occur are listed; the others are counted in one line.
"""
from __future__ import annotations

import html
import math
from string import Template
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:
    from pipeline.report.builder import ReportData, Tile

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; }
h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
.muted { color: #666; font-size: 13px; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 14px; }
dl.summary dt { font-weight: 600; }
dl.summary dd { margin: 0; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13px; }
ul.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { width: 14px; height: 14px; border: 1px solid #333; display: inline-block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 6px; }
figure img { width: 100%; height: auto; display: block; image-rendering: auto; }
figcaption { font-size: 12px; margin-top: 4px; word-break: break-all; }
figcaption .noimg { color: #b00; }
table { border-collapse: collapse; font-size: 13px; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.chart { max-width: 100%; border: 1px solid #ddd; background: #fff; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.placeholder { background: #eee; height: 120px; display: flex; align-items: center; justify-content: center; color: #888; }
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pseudolabel report: $title</title>
<style>$css</style>
</head>
<body>
<h1>Pseudo-label report</h1>
<p class="muted">$title</p>
<section id="summary"><h2>Summary</h2>$summary</section>
<section><h2>Samples</h2>
<p class="muted">$grid_note</p>
<div id="overlay-grid" class="grid">$grid</div>
</section>
<section><h2>Confidence</h2>
<p><img id="confidence-histogram" class="chart" src="$hist_src" alt="confidence histogram"></p>
</section>
<section><h2>Lowest mean confidence</h2><div id="lowest-confidence" class="grid">$lowest</div></section>
<section id="failures"><h2>Failures</h2>$failures</section>
<section><h2>Highest mean confidence</h2><div id="highest-confidence" class="grid">$highest</div></section>
$evaluation
<section><h2>Classes</h2>$legend</section>
<section><h2>Per-class statistics</h2>
<p class="muted">$stats_note</p>
<div class="row">$class_table
<img id="class-share-chart" class="chart" src="$class_share_src" alt="class pixel share"></div>
</section>
</body>
</html>
""")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Optional[float], digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    return f"{100 * float(value):.{digits}f}%"


def _hex(color: Iterable[int]) -> str:
    r, g, b = list(color)[:3]
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def _summary(data: "ReportData") -> str:
    raw = data.info.raw
    model = raw.get("model") or {}
    items = [
        ("Output", data.output_dir),
        ("Shards", data.num_shards),
        ("Samples", f"{data.num_rows} ({data.num_ok} ok, {data.num_failures} failed)"),
        ("Classes", f"{len(_present(data))} labelled, of {data.info.num_classes} in the vocabulary"),
        ("Ignored pixels", _pct(data.ignored_share, 2)),
        ("Model", f"{model.get('name', '?')} / {model.get('pretrained', '?')}"),
        ("Config fingerprint", raw.get("config_fingerprint", "?")),
        ("Created", raw.get("created_at", "?")),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f'<dl class="summary">{rows}</dl>'


def _present(data: "ReportData") -> list[int]:
    """Classes with labelled pixels, largest share first."""
    return sorted((i for i in range(data.info.num_classes) if data.pixel_share[i] > 0),
                  key=lambda i: -data.pixel_share[i])


def _unseen(data: "ReportData") -> str:
    """One line for the vocabulary's classes that no pixel got (names folded away)."""
    unseen = [n for i, n in enumerate(data.info.names) if not data.pixel_share[i] > 0]
    if not unseen:
        return ""
    return (f'<details id="unseen-classes"><summary>{len(unseen)} of {data.info.num_classes} classes '
            f'never labelled</summary><p class="muted">{_e(", ".join(unseen))}</p></details>')


def _legend(data: "ReportData") -> str:
    from pipeline.report.builder import IGNORE_COLOR

    items = [
        f'<li class="legend-item"><span class="swatch" style="background:{_hex(data.info.colors[i])}"></span>'
        f'{_e(data.info.names[i])}</li>'
        for i in _present(data)
    ]
    items.append(
        f'<li class="legend-item legend-ignore"><span class="swatch" style="background:{_hex(IGNORE_COLOR)}"></span>'
        f"ignore ({data.info.ignore_index})</li>"
    )
    return f'<ul id="legend" class="legend">{"".join(items)}</ul>{_unseen(data)}'


def _tiles(tiles: list["Tile"], names: list[str]) -> str:
    if not tiles:
        return '<p class="muted">No ok sample.</p>'
    out = []
    for t in tiles:
        classes = ", ".join(names[c] for c in t.classes if 0 <= c < len(names))
        if t.src:
            picture = (f'<a href="{_e(t.full or t.src)}" title="image | labels | confidence: open the larger view">'
                       f'<img class="overlay" src="{_e(t.src)}" alt="{_e(t.key)}" loading="lazy"></a>')
        else:
            picture = '<div class="placeholder">mask not found</div>'
        missing = "" if t.image_found else ' <span class="noimg">(original image unavailable: mask only)</span>'
        out.append(
            f'<figure class="tile">{picture}<figcaption><b>{_e(t.key)}</b> &middot; {_e(t.shard)}<br>'
            f"mean conf {_pct(t.mean_confidence)}{missing}<br>{_e(classes)}</figcaption></figure>"
        )
    return "".join(out)


def _class_table(data: "ReportData") -> str:
    rows = []
    for i in _present(data):
        rows.append(
            f'<tr><td><span class="swatch" style="background:{_hex(data.info.colors[i])}"></span> {_e(data.info.names[i])}</td>'
            f'<td class="num">{i}</td><td class="num">{_pct(data.pixel_share[i], 2)}</td>'
            f'<td class="num">{int(data.images_with_class[i])}</td>'
            f'<td class="num">{_pct(float(data.class_confidence[i]))}</td></tr>'
        )
    head = "<tr><th>class</th><th>index</th><th>pixel share</th><th>images</th><th>mean confidence</th></tr>"
    return f'<table id="class-stats"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _failures(data: "ReportData") -> str:
    if data.num_failures == 0:
        return '<p id="no-failures">No failed sample.</p><table id="failures-table"><tbody></tbody></table>'
    kinds = "".join(f"<li>{_e(k)}: {v}</li>" for k, v in data.failure_kinds.items())
    rows = "".join(
        f'<tr class="failure"><td>{_e(r.shard)}</td><td>{_e(r.key)}</td><td class="num">{int(r.sample_index)}</td>'
        f"<td>{_e(r.error if isinstance(r.error, str) else 'unknown')}</td></tr>"
        for r in data.failures.itertuples(index=False)
    )
    more = ""
    if data.num_failures > len(data.failures):
        more = f'<p class="muted">Showing {len(data.failures)} of {data.num_failures} failures.</p>'
    head = "<tr><th>shard</th><th>key</th><th>index</th><th>error</th></tr>"
    return (
        f'<p>{data.num_failures} failed samples by kind:</p><ul id="failure-kinds">{kinds}</ul>'
        f'<table id="failures-table"><thead>{head}</thead><tbody>{rows}</tbody></table>{more}'
    )


def _evaluation(data: "ReportData") -> str:
    ev = data.evaluation
    if not ev:
        return ""
    items = [
        ("mIoU", _pct(ev.get("miou"))), ("pixel accuracy", _pct(ev.get("pixel_accuracy"))),
        ("fwIoU", _pct(ev.get("fwiou"))), ("coverage", _pct(ev.get("coverage"))),
        ("accuracy on covered pixels", _pct(ev.get("covered_accuracy"))),
        ("images scored", ev.get("num_images", "?")), ("ground truth", ev.get("ground_truth", "?")),
    ]
    summary = "".join(f"<dt>{_e(k)}</dt><dd>{v if k != 'ground truth' and k != 'images scored' else _e(v)}</dd>" for k, v in items)
    parts = [f'<section id="evaluation"><h2>Evaluation against ground truth</h2><dl id="eval-summary" class="summary">{summary}</dl>']
    if "iou-chart" in data.plots:
        parts.append(f'<p><img id="iou-chart" class="chart" src="{_e(data.plots["iou-chart"])}" alt="per-class IoU"></p>')
    if "sweep-chart" in data.plots:
        parts.append(f'<p><img id="sweep-chart" class="chart" src="{_e(data.plots["sweep-chart"])}" alt="threshold sweep"></p>')
    parts.append("</section>")
    return "".join(parts)


def render_html(data: "ReportData") -> str:
    names = list(data.info.names)
    return PAGE.substitute(
        title=_e(data.output_dir),
        css=CSS,
        summary=_summary(data),
        legend=_legend(data),
        grid_note=_e(f"{len(data.grid)} random ok samples: image | labels | confidence (white = 1); "
                     "click one for the larger view."),
        grid=_tiles(data.grid, names),
        lowest=_tiles(data.lowest, names),
        highest=_tiles(data.highest, names),
        stats_note=_e(
            f"Pixel share and image counts from all {data.num_ok} ok manifest rows; mean confidence from "
            f"{data.stats_images} sampled masks."
        ),
        class_table=_class_table(data),
        class_share_src=_e(data.plots.get("class-share-chart", "")),
        hist_src=_e(data.plots.get("confidence-histogram", "")),
        failures=_failures(data),
        evaluation=_evaluation(data),
    )
