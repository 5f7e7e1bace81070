"""``recsys report``: one self-contained HTML page, checked as a person sees it in headless Chromium."""

import html
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.image import imread
from toy_artifact import random_artifact

from pipelines import IngestConfig, ingest
from pipelines.readers import LogSpec
from recsys.cli import main
from recsys.evaluation.report_html import CHARTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOG = "user_id,item_id\n" + "".join(f"u{u},i{(u * 7 + j * 3) % 23}\n" for u in range(40) for j in range(8))

# Injected into a copy of the page: records script errors, failed loads and console.error calls, and the
# rendered box of every table and figure, into an attribute that --dump-dom prints.
PROBE = """<script>
(() => {
  const errors = [];
  window.addEventListener("error", (e) => errors.push(String(e.message || (e.target && (e.target.src
    || e.target.href)) || "error")), true);
  const original = console.error;
  console.error = (...args) => { errors.push(args.join(" ")); original.apply(console, args); };
  window.addEventListener("load", () => {
    const box = (el) => { const r = el.getBoundingClientRect();
      return [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round); };
    const shown = {};
    for (const el of document.querySelectorAll("table[id], figure[id]")) {
      const style = getComputedStyle(el);
      const svg = el.querySelector("svg");
      shown[el.id] = {box: box(el), visible: style.display !== "none" && style.visibility !== "hidden",
        svg: svg ? box(svg) : null, rows: el.querySelectorAll("tbody tr").length,
        marks: svg ? svg.querySelectorAll("path, rect, use").length : 0};
    }
    document.documentElement.setAttribute("data-probe", JSON.stringify({errors, shown,
      height: document.documentElement.scrollHeight}));
  });
})();
</script>"""


@pytest.fixture
def report_page(tmp_path):
    """`recsys report` on a tiny dataset and a random-embedding artifact of it."""
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    dataset = ingest(IngestConfig(out=tmp_path / "ds", spec=LogSpec("csv"), input=log, seed=0)).out
    artifact = tmp_path / "run"
    random_artifact(dataset, artifact)
    out = tmp_path / "pages" / "report.html"
    argv = ["report", "-q", "--artifact", str(artifact), "--dataset", str(dataset), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_report_is_one_self_contained_file(report_page) -> None:
    text = report_page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert 'id="metric-table"' in text and 'id="segment-table"' in text and 'id="bias-table"' in text
    for chart in CHARTS:
        assert re.search(f'<figure id="{chart}"><svg', text), chart
    # Nothing to fetch: no external scripts, styles, images or fonts (SVG namespaces are not fetched).
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)
    assert "<link" not in text and "@import" not in text
    for row in ("mf", "popular", "random", "graph-filter"):
        assert f'<td class="name">{row}</td>' in text
    assert "honest: trained on train, selected on valid, test reported once" in text
    assert [p.name for p in report_page.parent.iterdir()] == ["report.html"]  # no temporary file left


def _chromium(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    command += ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _probe(page, tmp_path, width: int) -> tuple[dict, list[str]]:
    """Load a probed copy of ``page``: the probe's findings and the console lines Chromium logged."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    run = _chromium(f"--window-size={width},1000", "--dump-dom", probed.as_uri())
    found = re.search(r'data-probe="([^"]*)"', run.stdout)
    assert found, f"no probe result; chromium said: {run.stderr[-2000:]}"
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(found.group(1))), console


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_chromium_with_the_table_and_every_chart(report_page, tmp_path) -> None:
    width = 1200
    probe, console = _probe(report_page, tmp_path, width)
    assert probe["errors"] == [] and console == []
    shown = probe["shown"]
    assert shown["metric-table"]["visible"] and shown["metric-table"]["rows"] == 2 * 4  # K 10, 20 x 4 rows
    for chart in CHARTS:
        figure = shown[chart]
        assert figure["visible"] and figure["svg"] is not None and figure["marks"] > 10, chart
        assert figure["svg"][2] > 600 and figure["svg"][3] > 150, (chart, figure["svg"])

    # The screenshot shows them: each box holds ink, not just the background.
    shot = tmp_path / "report.png"
    height = probe["height"] + 20
    run = _chromium(f"--window-size={width},{height}", f"--screenshot={shot}", report_page.as_uri())
    assert shot.is_file(), run.stderr[-2000:]
    assert [line for line in run.stderr.splitlines() if ":CONSOLE" in line] == []
    pixels = imread(shot)[..., :3]
    assert pixels.shape[1] == width and pixels.shape[0] >= probe["height"]
    for name in ("metric-table", *CHARTS):
        left, top, w, h = shown[name]["box"]
        region = pixels[top : top + h, left : left + w]
        ink = (region.min(axis=2) < 0.8).mean()
        assert 0.01 < ink < 0.9, (name, ink)
    assert np.isfinite(pixels).all()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_the_browser_check_catches_a_broken_page(report_page, tmp_path) -> None:
    broken = tmp_path / "broken.html"
    page = report_page.read_text().replace(
        "</body>", '<img src="missing.png"><script>console.error("boom")</script></body>'
    )
    broken.write_text(
        page.replace('<figure id="chart-segments">', '<figure id="chart-segments" style="display:none">')
    )
    probe, console = _probe(broken, tmp_path, 1200)
    assert any("boom" in e for e in probe["errors"]) and any("missing.png" in e for e in probe["errors"])
    assert any("boom" in line for line in console)
    assert not probe["shown"]["chart-segments"]["visible"]
