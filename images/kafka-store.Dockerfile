# bssctl kafka-store image: the brokers' S3 object store, served by `bssctl kafka-store` (the bssctl
# binary built on the host, same Debian release); runs as bss
ARG BASE
FROM ${BASE}
COPY bssctl /usr/local/bin/bssctl
USER bss
