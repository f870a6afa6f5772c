#!/usr/bin/env bash
# The system programs the deploy test (tests/e2e/deploy.rs) starts for real: sshd
# (openssh-server), supervisord (supervisor, the stand-in for systemd where systemd is not
# PID 1) and systemd-analyze (systemd, to verify the installed units). Installs the Debian
# packages that are missing (needs root and apt); with everything present it does nothing.
# Idempotent.
set -euo pipefail
need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v supervisord >/dev/null || need+=(supervisor)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "the deploy test needs ${need[*]} (Debian packages): install them as root" >&2
  exit 1
fi
echo "installing ${need[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
