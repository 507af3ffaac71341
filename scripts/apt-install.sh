#!/usr/bin/env bash
# apt-install.sh PACKAGE...: install Debian packages as the test scripts need them, waiting for
# another apt-get or dpkg that holds the package locks (an unattended upgrade, a parallel run)
# instead of failing. `apt-get install` waits by itself with DPkg::Lock::Timeout; `apt-get
# update` does not (its lists lock ignores that option), so it is retried while that lock is held.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
wait_s=600
opts=(-qq -o Acquire::Retries=3 -o DPkg::Lock::Timeout=$wait_s)
deadline=$((SECONDS + wait_s))
until err=$(apt-get update "${opts[@]}" 2>&1 >/dev/null); do
  if [[ $err != *"Could not get lock"* ]] || ((SECONDS >= deadline)); then
    echo "$err" >&2
    exit 1
  fi
  echo "apt-get update: another apt-get holds the package lists; waiting" >&2
  sleep 5
done
apt-get install -y "${opts[@]}" --no-install-recommends "$@" >/dev/null
