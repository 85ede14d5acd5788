"""Grafana provisioning files: the PostgreSQL data source and the dashboard provider."""

from __future__ import annotations

from grafana_generator.model import DATASOURCE_TYPE, DATASOURCE_UID, HEADER

ENV = {
    "CITYKPI_GRAFANA_DB_HOST": "host:port of the database (local stack: 127.0.0.1:15433)",
    "CITYKPI_GRAFANA_DB_USER": "database role Grafana connects as (a read-only role)",
    "CITYKPI_GRAFANA_DB_PASSWORD": "its password",
    "CITYKPI_GRAFANA_DB_SSLMODE": "disable | require | verify-ca | verify-full (verify-full off the host)",
    "CITYKPI_GRAFANA_DB_SSLROOTCERT": "CA file of the database's certificate (verify-ca / verify-full)",
    "CITYKPI_GRAFANA_DASHBOARDS_DIR": "absolute path of deploy/grafana/dashboards (or where it is mounted)",
}


def datasource_yaml() -> str:
    return f"""# {HEADER}
# Grafana expands $VARS from its environment (no default syntax): see deploy/grafana/README.md and
# run-local.sh for the local defaults.
apiVersion: 1

datasources:
  - name: citykpi
    uid: {DATASOURCE_UID}
    type: {DATASOURCE_TYPE}
    access: proxy
    orgId: 1
    url: ${{CITYKPI_GRAFANA_DB_HOST}}
    user: ${{CITYKPI_GRAFANA_DB_USER}}
    isDefault: true
    editable: false
    jsonData:
      database: citykpi
      sslmode: ${{CITYKPI_GRAFANA_DB_SSLMODE}}
      tlsConfigurationMethod: file-path
      sslRootCertFile: ${{CITYKPI_GRAFANA_DB_SSLROOTCERT}}
      postgresVersion: 1500
      timescaledb: true
      timeInterval: 1m
      maxOpenConns: 10
      maxIdleConns: 10
      maxIdleConnsAuto: true
      connMaxLifetime: 14400
    secureJsonData:
      password: ${{CITYKPI_GRAFANA_DB_PASSWORD}}
"""


def dashboards_yaml() -> str:
    return f"""# {HEADER}
apiVersion: 1

providers:
  - name: citykpi
    orgId: 1
    folder: citykpi
    folderUid: citykpi
    type: file
    disableDeletion: true
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: ${{CITYKPI_GRAFANA_DASHBOARDS_DIR}}
      foldersFromFilesStructure: false
"""
