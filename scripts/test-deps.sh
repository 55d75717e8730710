#!/usr/bin/env bash
# Installs the programs the tests run for real, when they are missing: nginx and redis-server
# (deploy tests), systemd-analyze (the unit file check), Chromium and its WebDriver (the chat
# page's browser tests), Node.js and npm, then the JavaScript SDKs of tests/js (from its
# package-lock.json). Debian/Ubuntu, as root.
set -euo pipefail
js=$(cd "$(dirname "$0")/../tests/js" && pwd)
install_js() {
    [ -d "$js/node_modules/openai" ] && return 0
    (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "test-deps: installed tests/js" >&2
}
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -eq 0 ]; then
    install_js
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "test-deps: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
# The packages start their own services on the default ports; the tests start their own.
for svc in nginx redis-server; do
    if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
    if command -v service >/dev/null 2>&1; then service "$svc" stop >/dev/null 2>&1 || true; fi
done
echo "test-deps: installed ${need[*]}" >&2
install_js
