# Event tier tools (sourced by dev/setup.sh with TOOLS, VENV, SUDO and log set). Idempotent; fast when present.
#   The brokers' store (`kafka.storage: s3`) is `bssctl kafka-store`, built with bssctl: nothing to install.
#   confluent-kafka 2.16.1 (PyPI): only for the self-contained librdkafka inside its wheel. Debian's kcat links
#       librdkafka 2.0, which cannot parse the tagged fields tansu sends (fixed in librdkafka 2.2.0); the
#       $TOOLS/bin/kcat wrapper runs Debian's kcat with the wheel's librdkafka instead.
CONFLUENT_KAFKA_VERSION=2.16.1

want_pip confluent-kafka "$CONFLUENT_KAFKA_VERSION" || {
  log "installing from PyPI: confluent-kafka==$CONFLUENT_KAFKA_VERSION (for its librdkafka)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
}
rdk_lib=$(find "$VENV" -path '*confluent_kafka.libs/librdkafka*.so*' -type f | head -n1)
[ -n "$rdk_lib" ] || { log "no librdkafka inside the confluent-kafka $CONFLUENT_KAFKA_VERSION wheel"; exit 1; }
mkdir -p "$TOOLS/lib/rdkafka"
ln -sf "$rdk_lib" "$TOOLS/lib/rdkafka/librdkafka.so.1"
kcat_wrapper="$TOOLS/bin/kcat"
kcat_body="#!/bin/sh
# Installed by bssctl dev/setup.d/events.sh: Debian's kcat with librdkafka from confluent-kafka $CONFLUENT_KAFKA_VERSION.
LD_LIBRARY_PATH=\"$TOOLS/lib/rdkafka\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" exec /usr/bin/kcat \"\$@\""
if [ ! -x "$kcat_wrapper" ] || [ "$(cat "$kcat_wrapper")" != "$kcat_body" ]; then
  printf '%s\n' "$kcat_body" > "$kcat_wrapper"
  chmod 755 "$kcat_wrapper"
  "$kcat_wrapper" -V 2>&1 | grep -Eq 'librdkafka 2\.([2-9]|[1-9][0-9])\.' \
    || { log "kcat wrapper does not load a librdkafka >= 2.2 ($("$kcat_wrapper" -V 2>&1 | grep -o 'librdkafka [0-9.]*'))"; exit 1; }
fi
