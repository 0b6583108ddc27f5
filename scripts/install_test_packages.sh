#!/usr/bin/env bash
# System packages the test suite uses, from Debian: headless Chromium and its WebDriver for the
# browser test (tests/integration/test_web_page.py), and espeak-ng, which synthesizes the speech
# of the real-speech tests (tests/speech.py). Idempotent. Installs them when running as root with
# apt-get; otherwise says how to install them and exits 0 (the browser test then skips; the
# real-speech tests need espeak-ng).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

missing=()
(have chromium || have chromium-browser) || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
have espeak-ng || missing+=(espeak-ng)

if [ ${#missing[@]} -eq 0 ]; then
    echo "test packages installed: $( (chromium --version || chromium-browser --version) 2>/dev/null | head -1), $(espeak-ng --version | head -1)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && have apt-get; then
    echo "installing ${missing[*]} with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
    exit 0
fi

cat <<HELP
Missing: ${missing[*]}. They cannot be installed from here (this needs root and apt-get).
Install them, then re-run the tests:
  Debian/Ubuntu:  sudo apt-get install -y chromium chromium-driver espeak-ng
                  (on Ubuntu, chromium may come as a snap: chromium-browser / chromium.chromedriver)
  Fedora:         sudo dnf install -y chromium chromedriver espeak-ng
  macOS:          brew install --cask chromium && brew install --cask chromedriver && brew install espeak-ng
Without chromium tests/integration/test_web_page.py skips its browser test; the real-speech tests
(tests/real, tests/integration/test_real_cascade.py) need espeak-ng.
HELP
exit 0
