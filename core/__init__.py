"""The bottom layer: settings, logging and metrics, which every other package may import.

Kept apart from ``ingest/`` (the composition root at the top) so that processors and KPI rollups
depend on configuration without depending on ingestion; the import contracts in pyproject.toml
enforce the direction.
"""
