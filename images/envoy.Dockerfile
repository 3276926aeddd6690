# bssctl envoy image: Envoy (the binary the setup installs on the host); runs as bss
ARG BASE
FROM ${BASE}
COPY envoy /usr/local/bin/envoy
USER bss
