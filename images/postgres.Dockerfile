# bssctl postgres image: PostgreSQL 15 server and client tools (initdb, pg_basebackup, pg_rewind) on PATH; runs as postgres (uid 900)
ARG BASE
FROM ${BASE}
# A fixed uid so secret files delivered from the host can be owned by it (0400).
RUN groupadd --system --gid 900 postgres && useradd --system --uid 900 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 postgresql-client-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && chown postgres:postgres /var/lib/bssctl /run/bssctl /var/log/bssctl \
 && mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER postgres
