#!/usr/bin/env python3
"""The one source of truth of citykpi's Grafana dashboards and provisioning files.

    python deploy/grafana/generate.py          # (re)write dashboards/*.json and provisioning/**
    python deploy/grafana/generate.py --check  # exit 1 if the committed files differ

Plain dicts -> JSON (Grafana dashboard schema 39, PostgreSQL data source with TimescaleDB on),
built by the package next to this script: `grafana_generator.model` (panels, variables, dashboards),
`.queries` (SQL building blocks, catalog facts), `.boards` (one module per dashboard),
`.provisioning`. Why not grafana-foundation-sdk: deploy/grafana/README.md.
KPI names, WHO/EU thresholds and noise periods come from the KPI catalog (kpi_rollups.catalog), so the
dashboards follow the catalog (the test fails until they are regenerated). Every panel's SQL is run
against a real database by tests/integration/test_grafana_dashboards.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DASHBOARDS_DIR = HERE / "dashboards"
PROVISIONING_DIR = HERE / "provisioning"
sys.path[:0] = [str(HERE), str(REPO)]  # run as a script from anywhere: the generator, then the repository

from grafana_generator.boards.air import air  # noqa: E402
from grafana_generator.boards.ingestion import ingestion  # noqa: E402
from grafana_generator.boards.noise import noise  # noqa: E402
from grafana_generator.boards.overview import overview  # noqa: E402
from grafana_generator.boards.traffic import traffic  # noqa: E402
from grafana_generator.boards.water_energy import water_energy  # noqa: E402
from grafana_generator.model import DATASOURCE_TYPE, DATASOURCE_UID  # noqa: E402
from grafana_generator.provisioning import ENV, dashboards_yaml, datasource_yaml  # noqa: E402

__all__ = ["DATASOURCE_TYPE", "DATASOURCE_UID", "ENV", "render_all", "stale_files"]

DASHBOARDS = (overview, air, noise, water_energy, traffic, ingestion)


def render_all() -> dict[Path, str]:
    """Every generated file and its exact content."""
    files: dict[Path, str] = {}
    for make in DASHBOARDS:
        d = make().build()
        name = str(d["uid"]).removeprefix("citykpi-") + ".json"
        files[DASHBOARDS_DIR / name] = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    files[PROVISIONING_DIR / "datasources" / "citykpi.yaml"] = datasource_yaml()
    files[PROVISIONING_DIR / "dashboards" / "citykpi.yaml"] = dashboards_yaml()
    return files


def stale_files(files: dict[Path, str]) -> list[Path]:
    """Generated-looking files on disk that the generator no longer writes."""
    existing = set(DASHBOARDS_DIR.glob("*.json"))
    return sorted(existing - set(files))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed files differ")
    args = ap.parse_args(argv)
    files = render_all()
    if args.check:
        bad = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        bad += stale_files(files)
        for p in bad:
            print(f"out of date: {p.relative_to(REPO)}", file=sys.stderr)
        if bad:
            print("run: python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if bad else 0
    for p in stale_files(files):
        p.unlink()
        print(f"removed {p.relative_to(REPO)}")
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
            print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
