#!/usr/bin/env bash
# A stock Grafana, provisioned with the citykpi data source and dashboards, next to the local stack
# (deploy/local/stack.sh). Grafana's provisioning files have no default-value syntax, so the local
# defaults live here; every setting can be overridden from the environment.
#
#   deploy/grafana/run-local.sh          # then open http://127.0.0.1:13000 (admin / admin)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

: "${CITYKPI_GRAFANA_DB_HOST:=127.0.0.1:${CITYKPI_STACK_TSDB_PORT:-15433}}"
: "${CITYKPI_GRAFANA_DB_USER:=postgres}"
: "${CITYKPI_GRAFANA_DB_PASSWORD:=}"
: "${CITYKPI_GRAFANA_DB_SSLMODE:=disable}"
: "${CITYKPI_GRAFANA_DB_SSLROOTCERT:=}"
: "${CITYKPI_GRAFANA_DASHBOARDS_DIR:=$here/dashboards}"
export CITYKPI_GRAFANA_DB_HOST CITYKPI_GRAFANA_DB_USER CITYKPI_GRAFANA_DB_PASSWORD \
    CITYKPI_GRAFANA_DB_SSLMODE CITYKPI_GRAFANA_DB_SSLROOTCERT CITYKPI_GRAFANA_DASHBOARDS_DIR

export GF_PATHS_PROVISIONING="$here/provisioning"
export GF_PATHS_DATA="${GF_PATHS_DATA:-$repo/.stack/grafana/data}"
export GF_PATHS_LOGS="${GF_PATHS_LOGS:-$repo/.stack/grafana/log}"
export GF_SERVER_HTTP_ADDR="${GF_SERVER_HTTP_ADDR:-127.0.0.1}"
export GF_SERVER_HTTP_PORT="${GF_SERVER_HTTP_PORT:-13000}"
export GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH="${GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH:-$CITYKPI_GRAFANA_DASHBOARDS_DIR/overview.json}"
mkdir -p "$GF_PATHS_DATA" "$GF_PATHS_LOGS"

homepath="${GRAFANA_HOME:-/usr/share/grafana}"
if command -v grafana >/dev/null 2>&1; then
    exec grafana server --homepath "$homepath"
elif command -v grafana-server >/dev/null 2>&1; then
    exec grafana-server --homepath "$homepath"
fi
echo "run-local.sh: no grafana binary on PATH; install Grafana (OSS) or set GRAFANA_HOME and PATH" >&2
exit 1
