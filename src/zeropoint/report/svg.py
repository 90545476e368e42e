"""Small self-contained SVG charts for the HTML report: no plotting library, no network, text
escaped, every mark with a tooltip (<title>). Each function returns one <svg> element as a
string.

* `scatter` — points numbered 1, 2, ... (the number drawn beside the marker and listed in a
  legend table by the caller), so labels never overlap however close the points are;
* `lines` — series of (x, y) points joined, one colour per series, with a legend;
* `hbars` — horizontal bars, one row per label, one or more series side by side, on a
  logarithmic or linear axis;
* `histogram` — counts in equal bins with the clip range drawn as two vertical lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
FONT = "font-family='system-ui,sans-serif'"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    group: str = ""
    number: int = 0
    highlight: bool = False


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4g}"


def _ticks(lo: float, hi: float, log: bool, n: int = 5) -> list[float]:
    if log:
        a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        for mantissas in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
            found = [m * 10.0**e for e in range(a, b + 1) for m in mantissas
                     if lo <= m * 10.0**e <= hi]  # fmt: skip
            if len(found) >= 3:
                break
        if len(found) > 8:
            found = found[:: math.ceil(len(found) / 8)]
        return found or [lo, hi]
    if hi == lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


class _Axes:
    """Maps data to pixels inside a plot area with margins."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], width: int, height: int,
                 log_x: bool, log_y: bool = False, pad: float = 0.06) -> None:  # fmt: skip
        self.w, self.h, self.log_x, self.log_y = width, height, log_x, log_y
        self.left, self.right, self.top, self.bottom = 64, 16, 14, 44
        self.x0, self.x1 = self._span([self._tx(v) for v in xs], pad)
        self.y0, self.y1 = self._span([self._ty(v) for v in ys], pad)

    def _tx(self, v: float) -> float:
        return math.log10(max(v, 1e-300)) if self.log_x else v

    def _ty(self, v: float) -> float:
        return math.log10(max(v, 1e-300)) if self.log_y else v

    @staticmethod
    def _span(vs: list[float], pad: float) -> tuple[float, float]:
        lo, hi = (min(vs), max(vs)) if vs else (0.0, 1.0)
        if hi == lo:
            lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
        d = hi - lo
        return lo - pad * d, hi + pad * d

    def px(self, v: float) -> float:
        span = self.w - self.left - self.right
        return self.left + (self._tx(v) - self.x0) / (self.x1 - self.x0) * span

    def py(self, v: float) -> float:
        span = self.h - self.top - self.bottom
        return self.h - self.bottom - (self._ty(v) - self.y0) / (self.y1 - self.y0) * span

    def frame(self, xlabel: str, ylabel: str) -> list[str]:
        out = [f"<rect x='{self.left}' y='{self.top}' width='{self.w - self.left - self.right}' "
               f"height='{self.h - self.top - self.bottom}' fill='#fff' stroke='#bbb'/>"]  # fmt: skip
        xs = [10**t if self.log_x else t for t in (self.x0, self.x1)]
        last: tuple[float, float] | None = None  # (x, half width) of the last label drawn
        for t in _ticks(min(xs), max(xs), self.log_x):
            if not self.x0 <= self._tx(t) <= self.x1:
                continue
            x = self.px(t)
            half = 3.4 * len(_fmt(t))  # ~6.8 px per character at font size 11
            if last is not None and x - last[0] < last[1] + half + 6:
                continue  # log ticks crowd at the top of a decade: labels must not overlap
            last = (x, half)
            out.append(f"<line x1='{x:.1f}' y1='{self.top}' x2='{x:.1f}' "
                       f"y2='{self.h - self.bottom}' stroke='#eee'/>")  # fmt: skip
            out.append(f"<text x='{x:.1f}' y='{self.h - self.bottom + 14}' font-size='11' "
                       f"text-anchor='middle' {FONT}>{escape(_fmt(t))}</text>")  # fmt: skip
        ys = [10**t if self.log_y else t for t in (self.y0, self.y1)]
        for t in _ticks(min(ys), max(ys), self.log_y):
            if not self.y0 <= self._ty(t) <= self.y1:
                continue
            y = self.py(t)
            out.append(f"<line x1='{self.left}' y1='{y:.1f}' x2='{self.w - self.right}' "
                       f"y2='{y:.1f}' stroke='#eee'/>")  # fmt: skip
            out.append(f"<text x='{self.left - 6}' y='{y + 4:.1f}' font-size='11' "
                       f"text-anchor='end' {FONT}>{escape(_fmt(t))}</text>")  # fmt: skip
        cx = (self.left + self.w - self.right) / 2
        out.append(f"<text x='{cx:.1f}' y='{self.h - 8}' font-size='12' text-anchor='middle' "
                   f"{FONT}>{escape(xlabel)}</text>")  # fmt: skip
        cy = (self.top + self.h - self.bottom) / 2
        out.append(f"<text x='14' y='{cy:.1f}' font-size='12' text-anchor='middle' "
                   f"transform='rotate(-90 14 {cy:.1f})' {FONT}>{escape(ylabel)}</text>")  # fmt: skip
        return out


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(label)}'>"
            + "".join(body) + "</svg>")  # fmt: skip


#: Points whose markers lie closer than this (pixels, both axes) share one label.
LABEL_MERGE_PX = 10.0


def scatter(points: Sequence[Point], xlabel: str, ylabel: str, width: int = 520,
            height: int = 340, log_x: bool = True, title: str = "") -> str:  # fmt: skip
    """Numbered points (see the module docstring); highlighted points are filled circles, the
    others crosses; colour by group. Points closer than ``LABEL_MERGE_PX`` share one label
    ("1,4", in the first one's colour) instead of printing their numbers over each other."""
    if not points:
        return _svg(width, 40, [f"<text x='8' y='24' {FONT}>no data</text>"], title)
    ax = _Axes([p.x for p in points], [p.y for p in points], width, height, log_x)
    body = ax.frame(xlabel, ylabel)
    groups = list(dict.fromkeys(p.group for p in points))
    labels: list[tuple[float, float, list[str], str]] = []  # x, y, numbers, colour
    for p in points:
        color = PALETTE[groups.index(p.group) % len(PALETTE)]
        x, y = ax.px(p.x), ax.py(p.y)
        near = next((lb for lb in labels if abs(lb[0] - x) < LABEL_MERGE_PX
                     and abs(lb[1] - y) < LABEL_MERGE_PX), None)  # fmt: skip
        if near is None:
            labels.append((x, y, [str(p.number)], color))
        else:  # points on (nearly) one spot share one label, "1,4", instead of overprinting
            near[2].append(str(p.number))
        tip = f"<title>{p.number}. {escape(p.label)}: {_fmt(p.x)}, {_fmt(p.y)}</title>"
        if p.highlight:
            body.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{color}'>{tip}</circle>")
        else:
            body.append(f"<path d='M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},"
                        f"{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}' stroke='{color}' "
                        f"stroke-width='2'>{tip}</path>")  # fmt: skip
    placed: list[Box] = []
    for x, y, numbers, color in labels:
        text = ",".join(numbers)
        lx, ly = place_label(x, y, LABEL_CHAR_PX * len(text), placed, width, height)
        body.append(f"<text x='{lx:.1f}' y='{ly:.1f}' font-size='11' font-weight='bold' "
                    f"fill='{color}' {FONT}>{text}</text>")  # fmt: skip
    return _svg(width, height, body, title or f"{ylabel} against {xlabel}")


Box = tuple[float, float, float, float]  # left, top, right, bottom
LABEL_CHAR_PX = 6.8  # width of a character at font size 11 (bold digits)
LABEL_HEIGHT_PX = 11.0


def place_label(x: float, y: float, w: float, placed: list[Box], width: float,
                height: float) -> tuple[float, float]:  # fmt: skip
    """The text baseline position of a label ``w`` px wide for the point (x, y): the first of
    right-above, right-below, left-above, left-below, above, below whose box overlaps no box in
    ``placed`` and stays inside the chart (else right-above); its box is added to ``placed``."""
    h = LABEL_HEIGHT_PX
    candidates = [(x + 6, y - 6), (x + 6, y + 6 + h), (x - 6 - w, y - 6), (x - 6 - w, y + 6 + h),
                  (x - w / 2, y - 9), (x - w / 2, y + 9 + h)]  # fmt: skip

    def box(lx: float, ly: float) -> Box:
        return (lx, ly - h, lx + w, ly + 2)

    def free(b: Box) -> bool:
        inside = b[0] >= 0 and b[1] >= 0 and b[2] <= width and b[3] <= height
        return inside and all(b[2] <= o[0] or o[2] <= b[0] or b[3] <= o[1] or o[3] <= b[1]
                              for o in placed)  # fmt: skip

    lx, ly = next((c for c in candidates if free(box(*c))), candidates[0])
    placed.append(box(lx, ly))
    return lx, ly


def lines(series: Mapping[str, Sequence[tuple[float, float, str]]], xlabel: str, ylabel: str,
          width: int = 620, height: int = 360, log_x: bool = False, title: str = "") -> str:  # fmt: skip
    """One polyline per series of (x, y, tooltip) points, markers at the points, a legend."""
    pts = [(x, y) for s in series.values() for x, y, _ in s]
    if not pts:
        return _svg(width, 40, [f"<text x='8' y='24' {FONT}>no data</text>"], title)
    legend_h = 18 * len(series) + 6
    ax = _Axes([p[0] for p in pts], [p[1] for p in pts], width, height, log_x)
    body = ax.frame(xlabel, ylabel)
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        ordered = sorted(s)
        path = " ".join(f"{'M' if j == 0 else 'L'}{ax.px(x):.1f},{ax.py(y):.1f}"
                        for j, (x, y, _) in enumerate(ordered))  # fmt: skip
        body.append(f"<path d='{path}' fill='none' stroke='{color}' stroke-width='2'/>")
        for x, y, tip in ordered:
            body.append(f"<circle cx='{ax.px(x):.1f}' cy='{ax.py(y):.1f}' r='4' fill='{color}'>"
                        f"<title>{escape(name)}: {escape(tip)}</title></circle>")  # fmt: skip
        ly = height + 14 + 18 * i
        body.append(f"<rect x='{ax.left}' y='{ly - 9}' width='14' height='4' fill='{color}'/>")
        body.append(f"<text x='{ax.left + 20}' y='{ly}' font-size='12' {FONT}>"
                    f"{escape(name)}</text>")  # fmt: skip
    return _svg(width, height + legend_h, body, title or f"{ylabel} against {xlabel}")


def hbars(labels: Sequence[str], series: Mapping[str, Sequence[float | None]], xlabel: str,
          log: bool = True, width: int = 720, row: int = 16, title: str = "") -> str:  # fmt: skip
    """Horizontal bars: one row per label, the series side by side within it. On a log axis,
    values ≤ 0 (or missing) draw no bar; the axis spans four decades below the largest."""
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    positive = [v for v in values if v > 0]
    if not labels or (log and not positive) or (not log and not values):
        return _svg(width, 40, [f"<text x='8' y='24' {FONT}>no data</text>"], title)
    label_w = min(320, 7 * max(len(lbl) for lbl in labels) + 12)
    k = len(series)
    height = 30 + len(labels) * row * k + 20 + 34
    left, right = label_w, 70
    if log:
        hi = math.log10(max(positive))
        lo = max(math.log10(min(positive)), hi - 4)
        lo, hi = math.floor(lo), math.ceil(hi) if hi > math.floor(lo) else math.floor(lo) + 1
    else:
        lo, hi = min(0.0, min(values)), max(values) or 1.0

    def px(v: float) -> float:
        t = (math.log10(v) - lo) / (hi - lo) if log else (v - lo) / (hi - lo)
        return left + max(0.0, min(1.0, t)) * (width - left - right)

    body = []
    ticks = [10.0**e for e in range(int(lo), int(hi) + 1)] if log else _ticks(lo, hi, False)
    for t in ticks:
        x = px(t)
        body.append(f"<line x1='{x:.1f}' y1='20' x2='{x:.1f}' y2='{height - 54}' stroke='#eee'/>")
        body.append(f"<text x='{x:.1f}' y='14' font-size='10' text-anchor='middle' {FONT}>"
                    f"{escape(_fmt(t))}</text>")  # fmt: skip
    for i, lbl in enumerate(labels):
        y0 = 24 + i * row * k
        if k > 1:  # several series: a rule between labels shows which bars are whose
            body.append(f"<line x1='8' y1='{y0:.1f}' x2='{width - right}' y2='{y0:.1f}' "
                        "stroke='#ccc'/>")  # fmt: skip
        body.append(f"<text x='{left - 6}' y='{y0 + row * k / 2 + 4:.1f}' font-size='11' "
                    f"text-anchor='end' {FONT}>{escape(lbl)}</text>")  # fmt: skip
        for j, (name, vals) in enumerate(series.items()):
            v = vals[i]
            if v is None or not math.isfinite(v) or (log and v <= 0):
                continue
            x0 = px(10.0**lo) if log else px(0.0)
            x1 = px(v)
            color = PALETTE[j % len(PALETTE)]
            body.append(f"<rect x='{min(x0, x1):.1f}' y='{y0 + j * row + 2}' "
                        f"width='{abs(x1 - x0):.1f}' height='{row - 4}' fill='{color}'>"
                        f"<title>{escape(lbl)} — {escape(name)}: {_fmt(v)}</title></rect>")  # fmt: skip
    ly = height - 22
    body.append(f"<text x='{left}' y='{ly}' font-size='11' {FONT}>{escape(xlabel)}"
                f"{' (log scale)' if log else ''}</text>")  # fmt: skip
    ly += 16
    for j, name in enumerate(series):
        x = 8 + 210 * j
        body.append(f"<rect x='{x}' y='{ly - 9}' width='12' height='10' "
                    f"fill='{PALETTE[j % len(PALETTE)]}'/>")  # fmt: skip
        body.append(f"<text x='{x + 16}' y='{ly}' font-size='11' {FONT}>{escape(name)}</text>")
    return _svg(width, height, body, title or xlabel)


def histogram(counts: Sequence[int], lo: float, hi: float, clip: tuple[float, float] | None,
              below: int = 0, above: int = 0, width: int = 180, height: int = 44,
              title: str = "") -> str:  # fmt: skip
    """Bars of ``counts`` over [lo, hi] (square-root heights, so that tails show), the clip
    range as two red lines; counts below/above the drawn range in the tooltip."""
    n = len(counts)
    if n == 0 or hi <= lo:
        return _svg(width, height, [], title)
    top = max(math.sqrt(c) for c in counts) or 1.0
    bw = width / n
    path = []
    for i, c in enumerate(counts):
        if c:
            h = (height - 4) * math.sqrt(c) / top
            path.append(f"M{i * bw:.1f},{height}v{-h:.1f}h{bw:.1f}v{h:.1f}z")
    body = [f"<rect width='{width}' height='{height}' fill='#fafafa'/>",
            f"<path d='{''.join(path)}' fill='#6a8fbf'/>"]  # fmt: skip
    if clip is not None:
        for v in clip:
            x = (v - lo) / (hi - lo) * width
            if -1 <= x <= width + 1:
                body.append(f"<line x1='{x:.1f}' y1='0' x2='{x:.1f}' y2='{height}' "
                            f"stroke='#d62728' stroke-width='1.5'/>")  # fmt: skip
    tip = (f"{title}: [{_fmt(lo)}, {_fmt(hi)}]"
           + (f", clip [{_fmt(clip[0])}, {_fmt(clip[1])}]" if clip else "")
           + f", {below} below, {above} above the drawn range")  # fmt: skip
    body.append(f"<title>{escape(tip)}</title>")
    return _svg(width, height, body, title or "histogram")


__all__ = ["PALETTE", "Point", "hbars", "histogram", "lines", "scatter"]
