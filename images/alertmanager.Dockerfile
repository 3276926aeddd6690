# bssctl alertmanager image: Alertmanager and amtool; runs as bss
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
USER bss
