# bssctl bss-backend image: bss-backend built on the host (same Debian release); runs as bss
ARG BASE
FROM ${BASE}
COPY bss-backend /usr/local/bin/bss-backend
USER bss
