# bssctl prometheus image: Prometheus and promtool; runs as bss
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER bss
