#!/usr/bin/env bash
# System packages the test suite uses, from Debian: Chromium for the chat-page browser test,
# redis-server for the cluster tests (started by the tests on 127.0.0.1, never as a service), and
# prometheus for promtool (alert rule checks). Installs only what is missing and only when we may
# (root, or password-less sudo, with apt-get); otherwise the tests that need a package skip
# themselves with a message saying why. Never fails the build by itself.
set -u
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: no apt-get here; tests needing ${missing[*]} will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-system-deps: not root; tests needing ${missing[*]} will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq; then
  echo "install-system-deps: apt-get update failed; tests needing ${missing[*]} will be skipped" >&2
  exit 0
fi
# One package at a time: one that cannot be installed does not keep the others out.
for package in "${missing[@]}"; do
  if ! $SUDO apt-get install -y -qq --no-install-recommends "$package" >/dev/null; then
    echo "install-system-deps: could not install $package; tests needing it will be skipped" >&2
  fi
done
# Debian starts services it installs where it can; the tests start their own redis-server.
if [ -n "$(command -v systemctl)" ] && [[ " ${missing[*]} " == *" redis-server "* ]]; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
exit 0
