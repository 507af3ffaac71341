#!/usr/bin/env bash
# Install the identity providers the plugins' tests start for real (tests/provider/ of each
# plugin: npm packages such as panva/oidc-provider), from their package-lock.json. Node.js and
# npm are installed first where we may (root with apt-get, as in CI).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v npm >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: nodejs npm"
    bash "$root/scripts/apt-install.sh" nodejs npm
  else
    echo "missing Node.js and npm: the identity provider tests will fail (install them)" >&2
    exit 0
  fi
fi
for lock in "$root"/plugins/*/tests/provider/package-lock.json; do
  [[ -e $lock ]] || continue
  dir="$(dirname "$lock")"
  if [[ ! -d $dir/node_modules ]] || [[ $lock -nt $dir/node_modules ]]; then
    echo "installing the test provider in ${dir#"$root"/}"
    # the registry is a network away: a failed fetch (seen: a proxy's TLS hiccup) is retried
    for attempt in 1 2 3; do
      if npm ci --prefix "$dir" --prefer-offline --loglevel=error --no-audit --no-fund; then
        break
      fi
      if [[ $attempt -eq 3 ]]; then
        echo "npm ci failed three times in ${dir#"$root"/}" >&2
        exit 1
      fi
      echo "npm ci failed (attempt $attempt of 3), retrying in 10 s" >&2
      sleep 10
    done
  fi
done
