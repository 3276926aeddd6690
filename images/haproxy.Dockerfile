# bssctl haproxy image: HAProxy (master-worker); runs as bss
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER bss
