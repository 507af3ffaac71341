#!/usr/bin/env bash
# Install sslyze, the TLS scanner the scanner tests run against a live proxy, in a virtualenv
# of its own (.scanners/sslyze), with the Python that runs this script. It cannot share the
# test environment: sslyze 6.3.1 (the newest) requires cryptography<47, and installing it
# there would downgrade the cryptography Tether runs on (50.0 today): the tests would run
# Tether on a version users do not get. ssh-audit has no dependencies; the `test` extra has it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="6.3.1"
venv="$root/.scanners/sslyze"
python="${PYTHON:-python3}"
if [[ -x $venv/bin/sslyze ]] && [[ "$("$venv/bin/python" -c 'import sslyze.__version__ as v; print(v.__version__)' 2>/dev/null)" == "$version" ]]; then
  exit 0
fi
echo "installing sslyze $version in ${venv#"$root"/}"
rm -rf "$venv"
"$python" -m venv "$venv"
# the registry is a network away: a failed fetch is retried, as in test-providers.sh
for attempt in 1 2 3; do
  if "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "sslyze==$version"; then
    exit 0
  fi
  if [[ $attempt -eq 3 ]]; then
    echo "pip install sslyze failed three times" >&2
    exit 1
  fi
  echo "pip install sslyze failed (attempt $attempt of 3), retrying in 10 s" >&2
  sleep 10
done
