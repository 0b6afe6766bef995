#!/usr/bin/env bash
# Headless Chromium (Debian's `chromium` package) for the report's browser test
# (crates/xfer-cli/tests/report_browser.rs), which `just test` runs and must not skip.
# Installs it with apt when missing (as root, or through sudo); a no-op when it is there.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || [ -n "${XFER_CHROMIUM:-}" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: the report's browser test needs Chromium, and this machine has no apt-get;" >&2
    echo "install Chromium with your package manager, or point XFER_CHROMIUM at its binary" >&2
    exit 1
fi
echo "installing chromium (Debian package) for the report's browser test"
sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q chromium
