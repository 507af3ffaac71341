#!/usr/bin/env bash
# Install the system tools the tests (and, with --bench, the benchmarks) run for real:
# the OpenSSH client (ssh, scp, sftp, ssh-keygen, ssh-agent), openssl, the sftp-server that
# nodes start for SFTP sessions, useradd for the tests' OS accounts, xmlsec1 (SAML signatures,
# through pysaml2), Apache's htpasswd for the example connector, PostgreSQL's server and psql
# (the tether-db tests start a private PostgreSQL), ip and nft for the scenario that puts a leaf
# behind a firewall in a network namespace (tether.testing.netns), etcd for the tether-etcd
# storage tests (tether.testing.etcd; kube-deps also wants it); sshd for benchmarks. Only
# what is missing is installed, and only where we may (root with apt-get, as in CI); elsewhere
# it says what to install and the tests that need a missing tool fail with that name.
set -euo pipefail
need=()
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v sftp >/dev/null 2>&1 || need+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v useradd >/dev/null 2>&1 || need+=(passwd)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v xmlsec1 >/dev/null 2>&1 || need+=(xmlsec1)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]] || need+=(etcd-server)
# Debian keeps initdb and postgres out of PATH, under /usr/lib/postgresql/VERSION/bin
command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
  || need+=(postgresql)
sftp_server=no
for path in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server; do
  [[ -x $path ]] && sftp_server=yes
done
[[ $sftp_server == yes ]] || need+=(openssh-sftp-server)
if [[ "${1:-}" == "--bench" ]]; then
  command -v sshd >/dev/null 2>&1 || [[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  bash "$(dirname "$0")/apt-install.sh" "${need[@]}"
else
  echo "missing system packages: ${need[*]} (install them with your package manager)" >&2
fi
