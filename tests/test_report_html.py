"""The self-contained HTML report: its structure (parsed, every chart valid SVG, text escaped),
its saved data round-tripping, and the page rendered by headless Chromium — a screenshot that
is not blank and no script error (a page with an error is shown to be caught)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import zeropoint as zp
from tests.cli_models import build_model, calib_batches
from zeropoint.report.capture import captured_warnings
from zeropoint.report.html import CurvePoint, ReportData, render, write_html

CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (`make setup` installs Debian's chromium where it "
    "runs as root with apt-get)",
)


@pytest.fixture(scope="module")
def report_data() -> ReportData:
    model = build_model().eval()
    model_q = zp.quantize_static(model, calib_batches(), progress=False)
    analysis = zp.analyze(model, model_q, calib_batches(), progress=False)
    return ReportData(
        title="SmallNet <report>",
        subtitle="test machine",
        summary=[
            {"model": "SmallNet", "method": "fp32 (PyTorch)", "size KB": 7.1, "kl": 0.0},
            {"model": "SmallNet", "method": "zeropoint W8A8", "size KB": 2.4, "kl": 1e-5},
        ],
        points=[
            {"x": 7.1, "y": 0.0, "label": "fp32 (PyTorch)", "group": "SmallNet"},
            {
                "x": 2.4,
                "y": 1e-5,
                "label": "zeropoint W8A8",
                "group": "SmallNet",
                "highlight": True,
            },
            {"x": 2.5, "y": 2e-5, "label": "a peer", "group": "SmallNet"},
        ],
        points_y={"SmallNet": "KL to fp32"},
        analysis=analysis.as_dict(),
        curve={
            "uniform": [CurvePoint(1.0, 40.0, "W2"), CurvePoint(2.0, 80.0, "W4")],
            "mixed precision": [CurvePoint(1.0, 60.0, "≤W2"), CurvePoint(2.0, 90.0, "≤W4")],
        },
        curve_rows=[{"budget": "W2", "uniform": 40.0, "mixed precision": 60.0}],
        warnings=["RuntimeWarning (numpy/x.py): divide by zero (×3)"],
    )


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def test_report_structure_is_self_contained_and_escaped(report_data: ReportData) -> None:
    html = render(report_data)
    parser = _Collect()
    parser.feed(html)
    # no external resource of any kind
    for attr in ("src=", "href=", "@import", "url("):
        assert attr not in html
    # every chart parses as SVG
    svgs = [html[i : html.index("</svg>", i) + 6] for i in range(len(html))
            if html.startswith("<svg", i)]  # fmt: skip
    assert len(svgs) >= 6 + 2  # six histograms, the scatter, the bars, the curve
    for s in svgs:
        assert ET.fromstring(s).tag.endswith("svg")
    # the per-unit table: one row per unit, sortable, sensitivities most-sensitive first
    layers = report_data.analysis["layers"]  # type: ignore[index]
    for d in layers:
        assert f">{d['name']}<" in html
    assert html.count("class='sortable'") >= 2
    assert "SmallNet &lt;report&gt;" in html and "<report>" not in html
    assert len(parser.scripts) == 2  # the error hook and the table sorter, nothing else


def test_report_data_round_trips_through_json(report_data: ReportData, tmp_path: Path) -> None:
    text = report_data.to_json()
    json.loads(text)  # strict JSON: infinities written as strings
    again = ReportData.from_json(text)
    assert render(again) == render(ReportData.from_json(again.to_json()))
    with pytest.raises(ValueError, match="not a saved report"):
        ReportData.from_json("[]")


def _chromium(url: str, tmp: Path) -> tuple[Path, str, str]:
    assert CHROMIUM is not None
    png = tmp / "shot.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}"]  # fmt: skip
    shot = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", f"--screenshot={png}",
         "--window-size=1280,1600", url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    return png, dom.stdout, shot.stderr


def _ink(png: Path) -> tuple[float, int]:
    """(share of pixels that are not white, number of distinct colours)."""
    image = pytest.importorskip("PIL.Image").open(png).convert("RGB")
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(-1, 3)
    not_white = (pixels < 245).any(1).double().mean()
    return float(not_white), len(torch.unique(pixels, dim=0))


@needs_chromium
def test_chromium_renders_the_report_without_script_errors(
    report_data: ReportData, tmp_path: Path
) -> None:
    path = write_html(tmp_path / "report.html", report_data)
    png, dom, log = _chromium(path.resolve().as_uri(), tmp_path)
    assert png.is_file(), log[-2000:]
    ink, colours = _ink(png)
    assert ink > 0.03 and colours > 20  # text, tables and charts, not a blank page
    html_tag = dom[dom.index("<html") : dom.index(">", dom.index("<html"))]
    assert 'data-ready="1"' in html_tag  # the last script ran
    assert "data-errors" not in html_tag and "Uncaught" not in log


_CLICK_AND_RECORD = """<script>
window.addEventListener('load', function () {
  var th = Array.prototype.find.call(document.querySelectorAll('table.sortable th'),
    function (h) { return h.textContent.indexOf('only this quantized') >= 0; });
  var col = Array.prototype.indexOf.call(th.parentNode.children, th);
  th.click();  // most sensitive first: the order the table is written in
  th.click();  // and back: least sensitive first
  var rows = th.closest('table').tBodies[0].rows;
  var keys = Array.prototype.map.call(rows, function (r) {
    return r.cells[col].getAttribute('data-v'); });
  document.documentElement.setAttribute('data-sorted', keys.join('|'));
});
</script></body>"""


@needs_chromium
def test_chromium_renders_the_command_line_report_and_sorts_it(tmp_path: Path) -> None:
    """The report `zeropoint quantize` writes (not a page built for the test), opened in
    Chromium: not blank, no script error, and a click on the sensitivity column sorts the
    per-layer table (a script appended to a copy clicks twice — the table is written most
    sensitive first, so the second click must reverse it — and records the column)."""
    from zeropoint.cli import main

    out = tmp_path / "out"
    assert main(["quantize", "tests.cli_models:build_model", "--calib",
                 "tests.cli_models:calib_batches", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    png, dom, log = _chromium((out / "report.html").resolve().as_uri(), tmp_path)
    ink, colours = _ink(png)
    assert ink > 0.03 and colours > 20
    html_tag = dom[dom.index("<html") : dom.index(">", dom.index("<html"))]
    assert 'data-ready="1"' in html_tag and "data-errors" not in html_tag
    assert "Uncaught" not in log
    clicked = tmp_path / "clicked.html"
    clicked.write_text((out / "report.html").read_text().replace("</body>", _CLICK_AND_RECORD))
    _, dom, log = _chromium(clicked.resolve().as_uri(), tmp_path)
    html_tag = dom[dom.index("<html") : dom.index(">", dom.index("<html"))]
    assert "data-errors" not in html_tag, log[-2000:]
    keys = html_tag.split('data-sorted="')[1].split('"')[0].split("|")
    drops = [float(k) for k in keys]
    doc = json.loads((out / "report.json").read_text())
    assert len(drops) == len(doc["analysis"]["layers"])
    assert drops == sorted(drops) and drops[0] < drops[-1]


@needs_chromium
def test_chromium_check_catches_a_script_error(tmp_path: Path) -> None:
    """The checks above can fail: a page whose script throws is caught by both."""
    html = render(ReportData(title="broken")).replace(
        "</body>", "<script>undefined_function();</script></body>"
    )
    path = tmp_path / "broken.html"
    path.write_text(html)
    _, dom, log = _chromium(path.resolve().as_uri(), tmp_path)
    assert 'data-errors="1"' in dom[dom.index("<html") : dom.index(">", dom.index("<html"))]
    assert "Uncaught ReferenceError" in log


def test_captured_warnings_are_counted_once_and_ours_shown(
    capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    import logging
    import warnings

    root = logging.getLogger()
    handlers = root.handlers[:]
    with captured_warnings() as caught:
        for _ in range(3):
            warnings.warn("third-party divide by zero", RuntimeWarning, stacklevel=1)
        logging.getLogger("somelib").warning("Please consider pre-processing")
        for _ in range(2):  # raised from zeropoint's own code: shown, once per place
            warnings.warn_explicit("a warning of ours", UserWarning, zp.__file__, 1)
    assert caught.count == 4 and len(caught.kinds) == 2
    assert any("(×3)" in line and "divide by zero" in line for line in caught.lines())
    assert any("Please consider pre-processing" in line for line in caught.lines())
    assert root.handlers == handlers
    err = capsys.readouterr().err
    assert "divide by zero" not in err and "pre-processing" not in err
    # ours go to the warnings machinery as usual (pytest records them), once per place
    assert [str(w.message) for w in recwarn].count("a warning of ours") == 1


def test_scatter_axis_labels_do_not_overlap() -> None:
    """A log size axis from 3.7k to 14k has ticks 4000 ... 9000, 1e+04 crowding at the top of
    the decade (the main job's MobileNetV2 chart drew "90001e+04"): the labels drawn keep apart
    by their widths (~6.8 px a character at font size 11) and 6 px."""
    from zeropoint.report import svg

    pts = [svg.Point(x, 50.0, str(i), number=i + 1) for i, x in enumerate((3737, 3813, 13853))]
    root = ET.fromstring(svg.scatter(pts, "size on disk (KB)", "top-1 %"))
    ns = "{http://www.w3.org/2000/svg}"
    labels = [(float(t.get("x", 0)), t.text or "") for t in root.iter(f"{ns}text")
              if t.get("text-anchor") == "middle" and t.text and t.text[0].isdigit()
              and "rotate" not in (t.get("transform") or "")]  # fmt: skip
    axis = sorted({lbl for lbl in labels if lbl[1] not in {p.label for p in pts}})
    assert len(axis) >= 2
    for (x0, a), (x1, b) in itertools.pairwise(axis):
        assert x1 - x0 >= 3.4 * (len(a) + len(b)) + 6, (a, b)  # half widths and a 6 px gap


def test_scatter_points_on_one_spot_share_one_label() -> None:
    """The main job's MobileNetV2 chart printed 1 over 4 (fp32 and ONNX Runtime fp32: the same
    size and agreement): coincident points get one label "1,4"; distant points keep their own."""
    from zeropoint.report import svg

    pts = [svg.Point(13853, 100.0, "fp32", number=1), svg.Point(3700, 72.0, "int8", number=2),
           svg.Point(13853.5, 100.0, "ORT fp32", number=4, group="peer"),
           svg.Point(3701, 72.1, "engine", number=3)]  # fmt: skip
    root = ET.fromstring(svg.scatter(pts, "size on disk (KB)", "top-1 %"))
    ns = "{http://www.w3.org/2000/svg}"
    bold = sorted(t.text or "" for t in root.iter(f"{ns}text") if t.get("font-weight") == "bold")
    assert bold == ["1,4", "2,3"]
    apart = [svg.Point(4000, 50.0, "a", number=1), svg.Point(12000, 90.0, "b", number=2)]
    root = ET.fromstring(svg.scatter(apart, "size", "top-1 %"))
    assert sorted(t.text or "" for t in root.iter(f"{ns}text")
                  if t.get("font-weight") == "bold") == ["1", "2"]  # fmt: skip


def test_scatter_labels_of_nearby_points_do_not_overlap() -> None:
    """Points 12 px apart keep their own labels (they are not one spot) but the labels may not
    print over each other (the digits CNN's chart read "3,126": "3,12" beside "6"): every
    label's box, ~6.8 px a character and 11 px high, is clear of every other's."""
    from zeropoint.report import svg

    pts = [svg.Point(4000, 50.0, "a", number=12), svg.Point(4215, 50.0, "b", number=6),
           svg.Point(4430, 50.0, "c", number=7), svg.Point(4000, 56.0, "d", number=1),
           svg.Point(12000, 90.0, "e", number=3)]  # fmt: skip
    root = ET.fromstring(svg.scatter(pts, "size", "top-1 %", log_x=False))
    ns = "{http://www.w3.org/2000/svg}"
    boxes = []
    for t in root.iter(f"{ns}text"):
        if t.get("font-weight") == "bold":
            x, y, n = float(t.get("x", 0)), float(t.get("y", 0)), len(t.text or "")
            boxes.append((x, y - 11, x + 6.8 * n, y + 2, t.text or ""))
    assert sorted(b[4] for b in boxes) == ["1", "12", "3", "6", "7"]
    for a, b in itertools.combinations(boxes, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a[4], b[4])
