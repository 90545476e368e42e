"""One self-contained HTML report: tables, charts (inline SVG, `zeropoint.report.svg`) and a few
lines of script that sort tables — no network, no external file, opens in any browser.

    data = ReportData(title="MobileNetV2", summary=[...], points=[...], analysis=result.as_dict())
    write_html("out/report.html", data)

`ReportData` holds plain values only (numbers, strings, lists, dicts — JSON-ready: `to_json` /
`from_json`), so a report can be re-rendered later from its saved data. Sections appear when
their data is present:

* the model-level table (``summary``: one dict per row; ``summary_notes`` under it);
* size against metric (``points``, one chart per ``Point.group``: numbered markers, legend table);
* the per-unit table of an analysis (``analysis``: `ModelAnalysis.as_dict()`), sortable by any
  column, each row with its activation histogram and clip range; the sensitivity bar chart; the
  rank correlation of the fast estimate with the exact measurement;
* the mixed-precision curve (``curve``: method → points; ``curve_rows`` as a table);
* the operations that stay float, and the three executions compared (from the analysis);
* further tables (``tables``), notes and the third-party warnings captured during the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from zeropoint.report import svg
from zeropoint.report.files import atomic_write_text


@dataclass
class CurvePoint:
    """One point of a size-vs-metric curve."""

    x: float
    y: float
    label: str = ""


@dataclass
class ReportData:
    """Everything a report shows (see the module docstring). Plain values only."""

    title: str
    subtitle: str = ""
    intro: list[str] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    summary_notes: list[str] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)  # svg.Point fields
    points_x: str = "size on disk (KB)"
    points_y: dict[str, str] = field(default_factory=dict)  # group → y-axis label
    analysis: dict[str, Any] | None = None
    analysis_title: str = ""
    curve: dict[str, list[CurvePoint]] = field(default_factory=dict)
    curve_x: str = "model size (MB)"
    curve_y: str = "metric"
    curve_title: str = ""
    curve_rows: list[dict[str, Any]] = field(default_factory=list)
    curve_notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """Strict JSON (non-finite numbers as the strings "inf", "-inf", "nan")."""
        return json.dumps(json_safe(asdict(self)), indent=1, default=_plain, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ReportData:
        doc = json.loads(text)
        if not isinstance(doc, dict) or "title" not in doc:
            raise ValueError("not a saved report: expected a JSON object with a 'title'")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"saved report has unknown fields {unknown}")
        doc["curve"] = {k: [CurvePoint(**p) for p in v] for k, v in doc.get("curve", {}).items()}
        doc["tables"] = [(t, rows) for t, rows in doc.get("tables", [])]
        return cls(**doc)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings and mapping keys as strings (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ---------------------------------------------------------------------------- rendering

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;margin-top:36px;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:middle}
th{background:#f3f5f8;cursor:pointer;user-select:none;position:sticky;top:0}
td.t,th.t{text-align:left;max-width:260px;overflow-wrap:anywhere}th{max-width:120px;white-space:normal}tr:nth-child(even) td{background:#fafbfc}
th.sorted-asc::after{content:" ▲"}th.sorted-desc::after{content:" ▼"}
.charts{display:flex;flex-wrap:wrap;gap:18px}.chart{border:1px solid #eee;padding:6px}
.note{color:#555;font-size:13px}.bad{color:#b00}.good{color:#070}
details{margin:8px 0}code{background:#f3f3f3;padding:0 3px}
.wrap{overflow-x:auto;max-height:760px;overflow-y:auto}
"""

_JS = """
window.__zpErrors = window.__zpErrors || [];
window.addEventListener('error', function (e) {
  window.__zpErrors.push(String(e.message));
  document.documentElement.setAttribute('data-errors', String(window.__zpErrors.length));
});
"""

_SORT_JS = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) { v = td.textContent.trim(); }
    var n = parseFloat(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var desc = !th.classList.contains('sorted-desc');
        heads.forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
        th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (desc ? -1 : 1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.documentElement.setAttribute('data-ready', '1');
})();
"""


def _cell(v: Any, digits: int = 4) -> tuple[str, str]:
    """(display text, sort key) of a value."""
    if v is None:
        return "–", ""
    if isinstance(v, bool):
        return str(v), str(int(v))
    if isinstance(v, int):
        return f"{v:,}", str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan", ""
        if math.isinf(v):
            return ("∞" if v > 0 else "−∞"), ("1e308" if v > 0 else "-1e308")
        a = abs(v)
        text = f"{v:.3g}" if a != 0 and (a < 1e-3 or a >= 1e6) else f"{v:.{digits}g}"
        return text, repr(v)
    return str(v), str(v)


def table(rows: list[dict[str, Any]], sortable: bool = True, extra: dict[str, list[str]] | None
          = None, digits: int = 4) -> str:  # fmt: skip
    """An HTML table of ``rows`` (columns: the union of the keys in first-seen order); ``extra``
    adds raw-HTML columns (one string per row)."""
    if not rows:
        return "<p class='note'>(empty)</p>"
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    extra = extra or {}
    text_cols = {c for c in columns if all(isinstance(r.get(c), str) or r.get(c) is None
                                           for r in rows)}  # fmt: skip
    head = "".join(f"<th class='{'t' if c in text_cols else ''}'>{escape(c)}</th>"
                   for c in columns) + "".join(f"<th class='t'>{escape(c)}</th>" for c in extra)  # fmt: skip
    body = []
    for i, r in enumerate(rows):
        cells = []
        for c in columns:
            shown, key = _cell(r.get(c), digits)
            cls = " class='t'" if c in text_cols else ""
            cells.append(f"<td{cls} data-v='{escape(key)}'>{escape(shown)}</td>")
        cells += [f"<td class='t'>{col[i]}</td>" for col in extra.values()]
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = " class='sortable'" if sortable else ""
    return (f"<div class='wrap'><table{cls}><thead><tr>{head}</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")  # fmt: skip


def _paragraphs(lines: list[str], cls: str = "note") -> str:
    return "".join(f"<p class='{cls}'>{escape(t)}</p>" for t in lines)


def _points_section(data: ReportData) -> str:
    if not data.points:
        return ""
    groups: dict[str, list[svg.Point]] = {}
    for p in data.points:
        point = svg.Point(**p)
        groups.setdefault(point.group, []).append(point)
    charts = []
    for group, pts in groups.items():
        numbered = [svg.Point(p.x, p.y, p.label, p.group, i + 1, p.highlight)
                    for i, p in enumerate(pts)]  # fmt: skip
        ylabel = data.points_y.get(group, "metric")
        chart = svg.scatter(numbered, data.points_x, ylabel, title=f"{group}: {ylabel}")
        legend = table([{"#": p.number, "method": p.label, data.points_x: p.x, ylabel: p.y}
                        for p in numbered], sortable=False)  # fmt: skip
        charts.append(f"<div class='chart'><h3>{escape(group)}</h3>{chart}{legend}</div>")
    return ("<h2 id='size-metric'>Size against quality</h2><p class='note'>Filled circles: "
            "zeropoint; crosses: the float model and the peers. Numbers refer to the table "
            "under each chart. The size axis is logarithmic.</p><div class='charts'>"
            + "".join(charts) + "</div>")  # fmt: skip


def _analysis_section(data: ReportData) -> str:
    a = data.analysis
    if not a:
        return ""
    unit = a.get("metric_unit") or ""
    parts = [f"<h2 id='layers'>{escape(data.analysis_title or 'Per-layer analysis')}</h2>"]
    parts.append(
        f"<p>Metric: <b>{escape(a['metric'])}</b>{' (' + escape(unit) + ')' if unit else ''} on "
        f"{a['samples']} samples. Float {_cell(a['float_value'])[0]}, quantized "
        f"{_cell(a['quantized_value'])[0]} (drop {_cell(a['quantized_drop'])[0]}). "
        "A drop is how much worse than the float model (positive: worse).</p>"
    )
    layers = list(a.get("layers", []))
    layers.sort(key=lambda d: -(d.get("only_quantized") or d.get("fisher") or 0.0))
    rows, hists = [], []
    for d in layers:
        rows.append({
            "layer": d["name"], "kind": d["kind"], "weights": d.get("weight_scheme") or "–",
            "activations": d.get("activation_scheme") or "–", "params": d.get("parameters"),
            "clip lo": d.get("clip_lo"), "clip hi": d.get("clip_hi"),
            "clipped %": None if d.get("clipped_share") is None else 100 * d["clipped_share"],
            "W SQNR dB": _num(d.get("weight_sqnr_db")), "A SQNR dB": _num(d.get("activation_sqnr_db")),
            "drop: only this quantized": d.get("only_quantized"),
            "recovery: this in float": d.get("recovery"),
            "fast estimate": d.get("fisher"),
        })  # fmt: skip
        h = d.get("histogram")
        if h:
            clip = (d["clip_lo"], d["clip_hi"]) if d.get("clip_lo") is not None else None
            hists.append(svg.histogram(h["counts"], h["lo"], h["hi"], clip, h.get("below", 0),
                                       h.get("above", 0), title=d["name"]))  # fmt: skip
        else:
            hists.append("")
    parts.append(
        "<p class='note'>Click a column to sort. <i>only this quantized</i>: the drop with this "
        "unit alone quantized (weights and output); <i>recovery</i>: how much of the full "
        "model's drop is won back by keeping this unit in float; <i>fast estimate</i>: the "
        "Fisher estimate from one forward and a few backward passes. Histogram: the values "
        "entering the unit's output quantizer (square-root heights), red lines: its clip "
        "range.</p>"
    )
    parts.append(table(rows, extra={"activation histogram": hists}))
    rho = a.get("rank_correlation") or {}
    if rho:
        parts.append("<h3>Fast estimate against the exact measurement</h3><ul>"
                     + "".join(f"<li>Spearman rank correlation, {escape(k)}: "
                               f"<b>{_cell(_num(v))[0]}</b></li>" for k, v in rho.items())
                     + "</ul>")  # fmt: skip
    notes = a.get("notes") or []
    if notes:
        parts.append("<ul>" + "".join(f"<li class='note'>{escape(str(n))}</li>" for n in notes)
                     + "</ul>")  # fmt: skip
    parts.append(_sensitivity_chart(layers))
    parts.append(_float_section(a))
    parts.append(_consistency_section(a.get("consistency")))
    timings = a.get("timings_s") or {}
    if timings:
        parts.append("<p class='note'>Analysis time: " + ", ".join(
            f"{escape(k)} {v:.1f} s" for k, v in timings.items()) + "</p>")  # fmt: skip
    return "".join(parts)


def _num(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _sensitivity_chart(layers: list[dict[str, Any]]) -> str:
    ranked = [d for d in layers if d.get("only_quantized") is not None or d.get("fisher")]
    if not ranked:
        return ""
    top = ranked[:40]
    series: dict[str, list[float | None]] = {
        "drop, only this quantized": [d.get("only_quantized") for d in top],
    }
    if any(d.get("recovery") is not None for d in top):
        series["recovery, this in float"] = [d.get("recovery") for d in top]
    if any(d.get("fisher") is not None for d in top):
        series["fast estimate"] = [d.get("fisher") for d in top]
    chart = svg.hbars([d["name"] for d in top], series, "sensitivity", log=True)
    more = f" (the {len(top)} most sensitive of {len(ranked)})" if len(ranked) > len(top) else ""
    return f"<h3 id='sensitivity'>Sensitivity{more}</h3><div class='chart'>{chart}</div>"


def _float_section(a: dict[str, Any]) -> str:
    ops, layers = a.get("float_ops") or [], a.get("float_layers") or []
    items = "".join(f"<li><code>{escape(o)}</code> — no integer kernel (runs in float in the "
                    "integer program and the ONNX export)</li>" for o in ops)  # fmt: skip
    items += "".join(f"<li><code>{escape(n)}</code> — left in float by the config</li>"
                     for n in layers)  # fmt: skip
    body = f"<ul>{items}</ul>" if items else "<p>None: every operation runs on integers.</p>"
    return f"<h3 id='float-ops'>Operations that stay float</h3>{body}"


def _consistency_section(c: dict[str, Any] | None) -> str:
    if not c:
        return ""
    rows = [{"executions": k.replace("_", " vs "), "output codes identical %": 100 * v,
             "max LSB": c.get("outputs_max_lsb", {}).get(k),
             "predictions agree %": 100 * c.get("predictions_agree", {}).get(k, float("nan"))}
            for k, v in c.get("outputs_identical", {}).items()]  # fmt: skip
    layers = c.get("layers") or []
    detail = (f"<details><summary>per operation ({len(layers)}), each fed the same input "
              f"codes</summary>{table(layers)}</details>") if layers else ""  # fmt: skip
    return (f"<h3 id='consistency'>Simulation, integer engine and ONNX Runtime</h3>"
            f"<p class='note'>{c.get('samples', '?')} samples, every execution from the float "
            f"input.</p>{table(rows, sortable=False)}{detail}")  # fmt: skip


def _curve_section(data: ReportData) -> str:
    if not data.curve:
        return ""
    series = {k: [(p.x, p.y, p.label) for p in v] for k, v in data.curve.items()}
    chart = svg.lines(series, data.curve_x, data.curve_y, title=data.curve_title)
    rows = table(data.curve_rows, sortable=True) if data.curve_rows else ""
    return (
        f"<h2 id='mixed'>{escape(data.curve_title or 'Mixed precision')}</h2>"
        f"<div class='chart'>{chart}</div>{_paragraphs(data.curve_notes)}{rows}"
    )


def render(data: ReportData) -> str:
    """The report as one HTML document (see the module docstring)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{escape(data.title)}</title><style>{_CSS}</style>",
        f"<script>{_JS}</script></head><body>",
        f"<h1>{escape(data.title)}</h1>",
        f"<p class='sub'>{escape(data.subtitle)}</p>" if data.subtitle else "",
        _paragraphs(data.intro, "intro"),
    ]
    if data.summary:
        parts.append("<h2 id='summary'>Models</h2>" + table(data.summary, sortable=True))
        parts.append(_paragraphs(data.summary_notes))
    parts.append(_points_section(data))
    parts.append(_analysis_section(data))
    parts.append(_curve_section(data))
    for title, rows in data.tables:
        parts.append(f"<h2>{escape(title)}</h2>{table(rows)}")
    if data.notes:
        parts.append("<h2>Notes</h2>" + _paragraphs(data.notes))
    if data.warnings:
        parts.append(f"<h2 id='warnings'>Third-party warnings ({len(data.warnings)})</h2>"
                     "<details><summary>captured during the run, listed once each</summary><ul>"
                     + "".join(f"<li><code>{escape(w)}</code></li>" for w in data.warnings)
                     + "</ul></details>")  # fmt: skip
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "".join(parts)


def write_html(path: str | Path, data: ReportData) -> Path:
    """Render ``data`` and write it to ``path`` atomically."""
    return atomic_write_text(path, render(data))


__all__ = ["CurvePoint", "ReportData", "json_safe", "render", "table", "write_html"]
