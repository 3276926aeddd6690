# shellcheck shell=bash
# Docker runtime: the tools bssctl needs on the host to build its images without a registry
# (debootstrap for the Debian base image). Sourced by dev/setup.sh (TOOLS, VENV, SUDO, log set);
# idempotent and instant when installed. The Docker engine itself is the machine's: when it is
# missing, this says so and the Docker tests fail naming this step.
if ! dpkg-query -W -f='${Status}' debootstrap 2>/dev/null | grep -q "install ok installed"; then
  log "installing Debian package: debootstrap (Docker base image)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
  log "docker CLI not found: the Docker runtime needs a Docker engine (apt-get install docker.io)"
elif ! docker version >/dev/null 2>&1; then
  log "docker engine not reachable: start dockerd for the Docker runtime"
fi
