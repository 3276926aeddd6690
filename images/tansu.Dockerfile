# bssctl tansu image: the tansu Kafka-protocol broker (the binary the setup installs on the host); runs as bss
ARG BASE
FROM ${BASE}
COPY tansu /usr/local/bin/tansu
USER bss
