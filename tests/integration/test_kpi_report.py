"""The U4SSC city profile: written from the real database, opened in headless Chromium."""

from __future__ import annotations

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


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


async def _report(dsn: str, tmp_path: Path) -> tuple[Path, Path]:
    await import_text(dsn, tmp_path, REGISTRY_A)
    await write(dsn, *(city_a_batch(day=d) for d in DAYS))
    for d in DAYS:  # daily values give the sparklines a series
        await refresh_kpis(dsn, "a", "day", d, now=NOW)
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
    assert "15.00 µg/m³" in html and "33-66%" in html
    assert "0.6 L/inhabitant/day" in html  # 3 whole days of 2 meters at 0.3 m3/day, 1000 inhabitants
    assert "Partial measurements (period in progress)" in html  # 2025 is not over on 1 July
    assert "| PM2.5 | 15.00 µg/m³ | 5.00 µg/m³ | 33 % | 33-66% |" in md
    assert "▁" in md or "█" in md  # text sparklines from the daily series


@pytest.mark.skipif(
    chromium() is None, reason="headless Chromium not installed (apt-get install -y chromium)"
)
async def test_report_renders_in_headless_chromium_with_every_kpi(tsdb: str, tmp_path: Path) -> None:
    html_path, _ = await _report(tsdb, tmp_path)
    exe = chromium()
    assert exe is not None
    base = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*base, "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert "</main>" in dom
    for kpi in checked_catalog().kpi:
        assert f'id="{kpi.slug}"' in dom, kpi.code
        assert kpi.name in dom and kpi.display_code in dom, kpi.code
    assert dom.count("<path") >= 15  # sparklines drawn
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            *base,
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            "--hide-scrollbars",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
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
