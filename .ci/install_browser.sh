#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/app/test_browser.py).
# Playwright's Python package is used only as a driver: it must never download a browser.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
fi
chromium --version
