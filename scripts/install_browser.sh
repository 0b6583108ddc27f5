#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser test (tests/integration/test_web_page.py).
# Idempotent. Installs the Debian packages when running as root with apt-get; otherwise says how
# to install them and exits 0 (the browser test then skips). The test also needs `pip install selenium`.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if (have chromium || have chromium-browser) && have chromedriver; then
    echo "chromium and chromedriver are installed: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -1)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && have apt-get; then
    echo "installing chromium and chromium-driver with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver
    exit 0
fi

cat <<'HELP'
chromium and/or chromedriver are not on PATH, and they cannot be installed from here
(this needs root and apt-get). Install them, then re-run the browser test:
  Debian/Ubuntu:  sudo apt-get install -y chromium chromium-driver
                  (on Ubuntu, chromium may come as a snap: chromium-browser / chromium.chromedriver)
  Fedora:         sudo dnf install -y chromium chromedriver
  macOS:          brew install --cask chromium && brew install --cask chromedriver
and the Python driver:  pip install selenium
Without them tests/integration/test_web_page.py skips its browser test.
HELP
exit 0
