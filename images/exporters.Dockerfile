# bssctl exporters image: the node, PostgreSQL and Redis exporters; runs as bss
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER bss
