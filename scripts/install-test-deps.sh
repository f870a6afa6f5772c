#!/usr/bin/env bash
# The system programs the deploy test (tests/e2e/deploy.rs) starts for real: sshd
# (openssh-server), supervisord (supervisor, the stand-in for systemd where systemd is not
# PID 1), systemd-analyze (systemd, to verify the installed units), openssl (its test
# certificate) and readelf (binutils: scripts/build-release.sh reads the binary's GLIBC_
# needs); and haproxy (the failover test, tests/e2e/failover.rs, puts it in front of
# three replicas). Installs the Debian
# packages that are missing (needs root and apt); with everything present it does nothing.
# Idempotent.
set -euo pipefail
need=()
# The paths deploy/tests/harness.py checks, and the package of each.
for pair in /usr/sbin/sshd:openssh-server /usr/bin/ssh:openssh-client \
  /usr/bin/ssh-keygen:openssh-client /usr/bin/supervisord:supervisor \
  /usr/bin/systemd-analyze:systemd /usr/bin/setpriv:util-linux /usr/bin/python3:python3 \
  /usr/bin/openssl:openssl /usr/bin/readelf:binutils /usr/bin/strip:binutils \
  /usr/bin/promtool:prometheus \
  /usr/bin/kubectl:kubernetes-client /usr/bin/node:nodejs /usr/bin/npm:npm \
  /usr/sbin/haproxy:haproxy; do
  [ -e "${pair%%:*}" ] || need+=("${pair#*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "the deploy and failover tests need ${need[*]} (Debian packages): install them as root" >&2
  exit 1
fi
echo "installing ${need[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
