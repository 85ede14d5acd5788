#!/usr/bin/env bash
# Make what the compose deployment's Mosquitto needs, under deploy/compose/secrets/ (git-ignored):
#
#   secrets/ca/ca.key, ca.crt            a self-signed CA (keep ca.key offline; only ca.crt is mounted)
#   secrets/mosquitto/ca.crt             the CA certificate, for Mosquitto and for citykpi (TLS_CA)
#   secrets/mosquitto/server.key, .crt   the broker's key and certificate, signed by the CA, valid for
#                                        mosquitto (compose network), localhost, 127.0.0.1 and
#                                        $MQTT_PUBLIC_HOSTNAME
#   secrets/mosquitto/passwd             Mosquitto password file: citykpi, simulator, healthcheck
#   secrets/mosquitto/healthcheck.password   the health check user's random password
#
#   ./make-certs.sh                 reads ./.env (copy .env.example first); ENV_FILE=… to use another
#   ./make-certs.sh --renew-server  keep the CA, make a new server key/certificate (before it expires)
#   ./make-certs.sh --passwords     rewrite only the password file (after changing .env passwords)
#
# The CA is made once and never overwritten. Needs openssl; mosquitto_passwd from the host
# (Debian: mosquitto) or, if missing, from the eclipse-mosquitto:2 image through docker.
# Run as root (or with sudo) so the files can be given to Mosquitto's uid/gid 1883 inside the
# container; otherwise the script prints the chown to run.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ENV_FILE=${ENV_FILE:-$HERE/.env}
SECRETS_DIR=${SECRETS_DIR:-$HERE/secrets}
DAYS_CA=${DAYS_CA:-3650}
DAYS_SERVER=${DAYS_SERVER:-825}
MOSQUITTO_GID=${MOSQUITTO_GID:-1883}
MOSQUITTO_IMAGE=${MOSQUITTO_IMAGE:-eclipse-mosquitto:2}

die() { echo "make-certs: $*" >&2; exit 1; }
log() { echo "make-certs: $*" >&2; }

[ -f "$ENV_FILE" ] || die "$ENV_FILE not found: cp $HERE/.env.example $HERE/.env and edit it first"
command -v openssl >/dev/null || die "openssl is needed (Debian: apt-get install openssl)"

env_get() {  # the value of KEY in the env file (compose syntax; the file is not sourced)
    local line
    line=$(grep -E "^[[:space:]]*$1=" "$ENV_FILE" | tail -n1) || true
    line=${line#*=}
    line=${line%\"}; line=${line#\"}; line=${line%\'}; line=${line#\'}
    printf '%s' "$line"
}

need_password() {
    local v
    v=$(env_get "$1")
    [ -n "$v" ] || die "$1 is empty in $ENV_FILE"
    [ "$v" != CHANGE_ME ] || die "$1 is still CHANGE_ME in $ENV_FILE"
    printf '%s' "$v"
}

MODE=${1:-all}
case "$MODE" in all | --renew-server | --passwords) ;; *) die "usage: $0 [--renew-server|--passwords]" ;; esac

umask 077
mkdir -p "$SECRETS_DIR/ca" "$SECRETS_DIR/mosquitto"
CA=$SECRETS_DIR/ca
MQ=$SECRETS_DIR/mosquitto

make_ca() {
    if [ -f "$CA/ca.key" ] && [ -f "$CA/ca.crt" ]; then
        log "keeping the existing CA ($CA/ca.crt)"
    else
        log "making a self-signed CA"
        openssl req -x509 -new -newkey rsa:4096 -nodes -sha256 -days "$DAYS_CA" \
            -keyout "$CA/ca.key" -out "$CA/ca.crt" -subj "/CN=citykpi compose CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            2>/dev/null
    fi
    cp "$CA/ca.crt" "$MQ/ca.crt"
}

make_server() {
    local host san
    host=$(env_get MQTT_PUBLIC_HOSTNAME)
    san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
    [ -n "$host" ] && san="$san,DNS:$host"
    log "making the broker certificate for $san"
    openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout "$MQ/server.key" -out "$MQ/server.csr" \
        -subj "/CN=${host:-mosquitto}" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
        "$san" > "$MQ/server.ext"
    openssl x509 -req -in "$MQ/server.csr" -CA "$CA/ca.crt" -CAkey "$CA/ca.key" -CAcreateserial \
        -CAserial "$CA/ca.srl" -out "$MQ/server.crt" -days "$DAYS_SERVER" -sha256 \
        -extfile "$MQ/server.ext" 2>/dev/null
    rm -f "$MQ/server.csr" "$MQ/server.ext"
    openssl verify -CAfile "$CA/ca.crt" "$MQ/server.crt" >/dev/null || die "the new certificate does not verify"
}

mosquitto_passwd_cmd() {  # mosquitto_passwd -b FILE USER PASSWORD, from the host or the image
    if command -v mosquitto_passwd >/dev/null; then
        mosquitto_passwd "$@"
    elif command -v docker >/dev/null; then
        local file=$2
        docker run --rm -u "$(id -u):$(id -g)" -v "$(dirname "$file"):/work" "$MOSQUITTO_IMAGE" \
            mosquitto_passwd -b "/work/$(basename "$file")" "$3" "$4"
    else
        die "mosquitto_passwd is needed (Debian: apt-get install mosquitto) or docker"
    fi
}

make_passwords() {
    local citykpi_pw sim_pw hc_pw tmp
    citykpi_pw=$(need_password CITYKPI_MQTT_PASSWORD)
    sim_pw=$(need_password SIMULATOR_MQTT_PASSWORD)
    if [ -s "$MQ/healthcheck.password" ]; then
        hc_pw=$(cat "$MQ/healthcheck.password")
    else
        hc_pw=$(openssl rand -hex 24)
        printf '%s' "$hc_pw" > "$MQ/healthcheck.password"
    fi
    # keep device users added by hand; (re)write the three service users
    tmp=$MQ/passwd.new
    if [ -f "$MQ/passwd" ]; then
        grep -v -E '^(citykpi|simulator|healthcheck):' "$MQ/passwd" > "$tmp" || true
    else
        : > "$tmp"
    fi
    mosquitto_passwd_cmd -b "$tmp" citykpi "$citykpi_pw"
    mosquitto_passwd_cmd -b "$tmp" simulator "$sim_pw"
    mosquitto_passwd_cmd -b "$tmp" healthcheck "$hc_pw"
    mv "$tmp" "$MQ/passwd"
    log "password file with users: $(cut -d: -f1 "$MQ/passwd" | tr '\n' ' ')"
}

case "$MODE" in
    all) make_ca; [ -f "$MQ/server.crt" ] || make_server; make_passwords ;;
    --renew-server) make_ca; make_server ;;
    --passwords) make_passwords ;;
esac

# Mosquitto runs as uid/gid 1883 in its container; citykpi (uid 10001) needs only ca.crt.
chmod 0755 "$MQ"
chmod 0640 "$MQ"/server.key "$MQ"/passwd "$MQ"/healthcheck.password 2>/dev/null || true
chmod 0644 "$MQ"/ca.crt "$MQ"/server.crt 2>/dev/null || true
chmod 0755 "$SECRETS_DIR" 2>/dev/null || true
chmod 0700 "$CA"
if [ "$(id -u)" = 0 ]; then
    chown -R "root:$MOSQUITTO_GID" "$MQ"
else
    log "not root: run  sudo chown -R root:$MOSQUITTO_GID $MQ"
    log "so that Mosquitto (gid $MOSQUITTO_GID in its container) can read the key and the password file"
fi
log "done: $MQ (mounted read-only into the mosquitto container; ca.crt also into citykpi)"
