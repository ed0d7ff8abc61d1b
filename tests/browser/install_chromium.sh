#!/bin/sh
# Install Debian's Chromium for the headless-browser tests (tests/test_explorer_browser.py)
# when it is missing. Playwright drives /usr/bin/chromium; its own browser download is not used.
# Without root (or without apt-get) this only says so: the browser tests then skip.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: /usr/bin/chromium missing and no root/apt-get; browser tests will skip" >&2
    exit 0
fi
if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }; then
    echo "install_chromium.sh: apt-get could not install chromium; the browser tests will skip" >&2
fi
