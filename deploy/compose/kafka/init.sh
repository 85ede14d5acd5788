#!/usr/bin/env bash
# The compose Kafka's SCRAM users, topics and ACLs (SECURITY.md), run by the one-shot `kafka-init`
# service inside the broker's network namespace: the broker's only unauthenticated listener
# (127.0.0.1:9091, a super user's) is reachable from there and nowhere else. Idempotent: every
# `docker compose up` re-applies it and sets the passwords from the secret files again.
#
#   citykpi    reads the source topics as group `citykpi`, writes the dead-letter topic
#   simulator  writes the source topics
# Nothing else: with no ACL, a principal may do nothing (allow.everyone.if.no.acl.found=false).
set -euo pipefail

BOOTSTRAP=${KAFKA_ADMIN_BOOTSTRAP:-127.0.0.1:9091}
BIN=${KAFKA_BIN:-/opt/kafka/bin}
SECRETS=${KAFKA_SECRETS_DIR:-/run/secrets}
SOURCE_TOPICS=(citykpi.senml citykpi.ngsi-ld citykpi.ngsi-v2 citykpi.sensor-community citykpi.ttn)
DEAD_LETTER_TOPIC=citykpi.dead-letters
GROUP=citykpi
PARTITIONS=${KAFKA_PARTITIONS:-6}

admin() { "$BIN/$1" --bootstrap-server "$BOOTSTRAP" "${@:2}"; }

for user in citykpi simulator; do
    # the password goes through a file descriptor, never onto a command line (a properties file:
    # no brackets around the value, unlike --add-config)
    admin kafka-configs.sh --alter --entity-type users --entity-name "$user" \
        --add-config-file <(printf 'SCRAM-SHA-512=password=%s\n' "$(cat "$SECRETS/kafka_${user}_password")")
done

for topic in "${SOURCE_TOPICS[@]}" "$DEAD_LETTER_TOPIC"; do
    admin kafka-topics.sh --create --if-not-exists --topic "$topic" \
        --partitions "$PARTITIONS" --replication-factor 1
done

for topic in "${SOURCE_TOPICS[@]}"; do
    admin kafka-acls.sh --add --allow-principal User:citykpi --operation Read --operation Describe --topic "$topic"
    admin kafka-acls.sh --add --allow-principal User:simulator --operation Write --operation Describe --topic "$topic"
done
admin kafka-acls.sh --add --allow-principal User:citykpi --operation Write --operation Describe \
    --topic "$DEAD_LETTER_TOPIC"
admin kafka-acls.sh --add --allow-principal User:citykpi --operation Read --group "$GROUP"
echo "kafka-init: users citykpi and simulator, ${#SOURCE_TOPICS[@]} source topics, dead letters, ACLs applied"
