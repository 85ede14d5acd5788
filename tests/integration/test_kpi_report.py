"""The U4SSC city profile: written from the real database, opened in headless Chromium."""

from __future__ import annotations

import html as html_lib
import json
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest

from kpi_rollups.formulas import checked_catalog
from kpi_rollups.refresh import refresh_kpis
from kpi_rollups.report import write_report
from tests.integration.test_kpi_formulas import NOW, REGISTRY_A, city_a_batch, import_text, write

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DAYS = [date(2025, 6, 10), date(2025, 6, 11), date(2025, 6, 12)]
EARLIER = [date(2024, 10, 8), date(2024, 11, 12), date(2025, 5, 20)]  # other months, and a 2nd year
# city a from 2024, its air stations in areas (centre 600 inhabitants, park 400) for SDG 11.6.2
REGISTRY = REGISTRY_A.replace("valid_from = 2025-01-01", "valid_from = 2024-01-01").replace(
    'device_ids = ["air-1", "air-2", ', "device_ids = ["
) + "".join(
    f'[[devices]]\ndevice_id = "{dev}"\narea_id = "{area}"\nexpected_interval_s = 3600\n'
    for dev, area in (("air-1", "centre"), ("air-2", "park"))
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(tmp_path: Path, *args: str) -> str:
    """Headless Chromium with a throw-away profile; its stdout (--dump-dom: the DOM after load)."""
    exe = chromium()
    assert exe is not None
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout


async def _report(dsn: str, tmp_path: Path) -> tuple[Path, Path]:
    await import_text(dsn, tmp_path, REGISTRY)
    await write(dsn, *(city_a_batch(day=d) for d in DAYS))
    for d in DAYS:  # daily values give the Markdown sparklines a series
        await refresh_kpis(dsn, "a", "day", d, now=NOW)
    await write(dsn, *(city_a_batch(day=d) for d in EARLIER))
    for d in EARLIER:
        await refresh_kpis(dsn, "a", "month", d, now=NOW)
    await refresh_kpis(dsn, "a", "year", EARLIER[0], now=NOW)
    return await write_report(dsn, "a", 2025, tmp_path / "out", now=NOW)


async def test_report_is_self_contained_and_lists_every_kpi(tsdb: str, tmp_path: Path) -> None:
    html_path, md_path = await _report(tsdb, tmp_path)
    html = html_path.read_text()
    md = md_path.read_text()
    assert html_path.name == "a-2025-u4ssc.html"
    # self-contained: no script, no external stylesheet, image or font, nothing fetched
    assert not re.search(r"<script|<link|<img|@import|url\(|https?://", html)
    assert html.count("<svg") >= 15
    for kpi in checked_catalog().kpi:
        assert kpi.name in html and kpi.display_code in html, kpi.code
        assert kpi.name in md and kpi.display_code in md, kpi.code
    for heading in ("Economy", "Environment"):
        assert f"<h2>{heading}</h2>" in html and f"## {heading}" in md
    # values, targets, bands and labels made it in (PM2.5 15 µg/m³ vs 5, band 33-66 %)
    assert '<span class="q">15.00</span><span class="u">µg/<wbr>m³</span>' in html and "33-66%" in html
    # 2 meters at 0.3 m3/day, 1000 inhabitants; the unit on its own line, under the number
    assert '<span class="q">0.6</span><span class="u">L/<wbr>inhabitant/<wbr>day</span>' in html
    assert "Partial measurements (period in progress)" in html  # 2025 is not over on 1 July
    assert "| PM2.5 | 15.00 µg/m³ | 5.00 µg/m³ | 33 % | 33-66% |" in md
    assert "▁" in md or "█" in md  # text sparklines from the monthly series (May and June)


async def test_report_groups_the_kpis_by_sdg_goal_and_target_with_their_years(
    tsdb: str, tmp_path: Path
) -> None:
    """The SDG section: SDG 11 -> target 11.6 -> air pollution through indicator 11.6.2, noise
    exposure (link unconfirmed); annual values of 2024 and 2025 as the trend; every catalog link
    appears once. SDG 11.6.2: air-1 (PM2.5 10 µg/m³) in centre (600 inhabitants), air-2 (20) in
    park (400): (600 x 10 + 400 x 20) / 1000 = 14.0 µg/m³ in both years."""
    html_path, md_path = await _report(tsdb, tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    start = html.index('<section class="sdg"')
    sdg_html = html[start : html.index("</section>", start)]
    sdg_md = md[md.index("## Sustainable Development Goals") : md.index("## Economy")]
    catalog = checked_catalog()
    for kpi in catalog.kpi:
        for link in kpi.sdg:
            assert f'id="sdg-{link.target}"' in sdg_html and f"**Target {link.target}**" in sdg_md
            assert sdg_html.count(f'href="#{kpi.slug}"') == len(kpi.sdg), kpi.code
    assert "<h3>SDG 11 — Sustainable cities and communities</h3>" in sdg_html
    assert "through SDG indicator 11.6.2" in sdg_html and "link unconfirmed" in sdg_html
    # noise exposure: 60 % of inhabitants above 55 dB in both years (same days' levels)
    lines = sdg_md.splitlines()
    noise = next(line for line in lines if line.startswith("| Noise exposure"))
    assert "2024: 60.00 · 2025: 60.00" in noise and "link unconfirmed" in noise
    air = next(line for line in lines if line.startswith("| Air pollution"))
    assert (
        "SDG indicator 11.6.2 | 14.00 µg/m³ | 5.00 µg/m³ | 36 % | 33-66% | 2024: 14.00 · 2025: 14.00 |" in air
    )
    assert sdg_html.count('<svg class="chart"') == sum(len(k.sdg) for k in catalog.kpi)


@pytest.mark.skipif(
    chromium() is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
async def test_report_renders_in_headless_chromium_with_every_kpi(tsdb: str, tmp_path: Path) -> None:
    html_path, _ = await _report(tsdb, tmp_path)
    dom = headless(tmp_path, "--dump-dom", html_path.resolve().as_uri())
    assert "</main>" in dom
    for kpi in checked_catalog().kpi:
        assert f'id="{kpi.slug}"' in dom, kpi.code
        assert kpi.name in dom and kpi.display_code in dom, kpi.code
    assert dom.count("<path") >= 15  # charts drawn
    shot = tmp_path / "report.png"
    headless(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1280,2400",
        "--hide-scrollbars",
        html_path.resolve().as_uri(),
    )
    assert shot.stat().st_size > 20_000


# Measures, after layout, every report table cell: the bounding box of its content (a Range over
# it: text, unit lines, chips, charts) must stay inside the cell, and must not intersect the next
# cell's content. Injected into a copy of the page only for the check: the report itself runs nothing.
LAYOUT_PROBE = """<script>
const problems = [];
let cells = 0;
const content = (el) => {
  const r = document.createRange();
  r.selectNodeContents(el);
  return r.getBoundingClientRect();
};
for (const tr of document.querySelectorAll("main table tr")) {
  const boxes = [...tr.children].map((td) => ({ cell: td.getBoundingClientRect(), inner: content(td) }));
  boxes.forEach((b, i) => {
    cells += 1;
    if (b.inner.width === 0) return;
    const where = tr.closest("[id]").id + " row " + tr.rowIndex + " col " + i;
    if (b.inner.left < b.cell.left - 0.5 || b.inner.right > b.cell.right + 0.5)
      problems.push(["overflows its cell", where, b.inner.left, b.inner.right, b.cell.left, b.cell.right]);
    const next = boxes[i + 1];
    if (next && next.inner.width > 0 && b.inner.right > next.inner.left + 0.5
        && b.inner.bottom > next.inner.top && next.inner.bottom > b.inner.top)
      problems.push(["overlaps the next cell", where, b.inner.right, next.inner.left]);
  });
}
const out = document.createElement("pre");
out.id = "layout-probe";
out.textContent = JSON.stringify({ cells, problems });
document.body.appendChild(out);
</script>"""


@pytest.mark.skipif(
    chromium() is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
@pytest.mark.parametrize("width", [1280, 1024, 800])
async def test_report_cells_do_not_overlap_in_headless_chromium(
    tsdb: str, tmp_path: Path, width: int
) -> None:
    """Long units (`0.6 L/inhabitant/day` next to `120.0 L/inhabitant/day`, kWh/inhabitant/year)
    used to run into the next column (on the old layout this probe found 12 problems at 1280 px, e.g.
    water consumption's value box ending at x = 489.5 over its target cell starting at 484.8);
    every cell's content now stays inside its cell, at a desktop, a laptop and a narrow window."""
    html_path, _ = await _report(tsdb, tmp_path)
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    window = f"--window-size={width},2400"
    dom = headless(tmp_path, window, "--dump-dom", probe.resolve().as_uri())
    found = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(html_lib.unescape(found.group(1)))
    assert result["cells"] > 150  # every KPI table and the SDG tables were measured
    assert result["problems"] == []
    shot = tmp_path / "report.png"
    headless(tmp_path, window, f"--screenshot={shot}", "--hide-scrollbars", html_path.resolve().as_uri())
    assert shot.stat().st_size > 20_000


async def test_hostile_registry_text_is_escaped_in_the_html_report(tsdb: str, tmp_path: Path) -> None:
    """A city name from the registry is data, not markup: the page shows it and runs nothing."""
    hostile = "</title><script>alert('x')</script><img src=x onerror=alert(1)> & \"Co\""
    await import_text(tsdb, tmp_path, REGISTRY_A.replace('name = "City A"', f"name = '''{hostile}'''"))
    await write(tsdb, city_a_batch(day=DAYS[0]))
    html_path, md_path = await write_report(tsdb, "a", 2025, tmp_path / "out", now=NOW)
    page = html_path.read_text()
    assert not re.search(r"<script|<img|onerror=alert\(1\)>", page)
    assert "&lt;/title&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&amp; &#34;Co&#34;" in page
    assert hostile in md_path.read_text()  # Markdown keeps the text as written
