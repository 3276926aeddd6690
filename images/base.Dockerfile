# bssctl base: the debootstrap'd Debian (imported as ${ROOTFS}) plus what every component image shares:
# the host's apt sources, no service starts during package installs, the unprivileged `bss` user,
# the entrypoint that loads env files and secret variables, and the fixed paths of the docker profile.
ARG ROOTFS
FROM ${ROOTFS}
COPY apt/ /etc/apt/
COPY entry.sh /usr/local/bin/bssctl-entry
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d /usr/local/bin/bssctl-entry \
 && rm -f /etc/apt/sources.list.d/*.disabled* \
 && groupadd --system --gid 10001 bss && useradd --system --uid 10001 --gid bss --home-dir /var/lib/bssctl --no-create-home --shell /usr/sbin/nologin bss \
 && mkdir -p /etc/bssctl /var/lib/bssctl /run/bssctl /var/log/bssctl /run/secrets/bssctl \
 && chown bss:bss /var/lib/bssctl /run/bssctl /var/log/bssctl \
 && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates curl procps \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/local/bin/bssctl-entry"]
