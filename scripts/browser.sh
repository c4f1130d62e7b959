#!/usr/bin/env bash
# The dashboard's browser test (tests/test_dashboard_browser.py) drives Debian's chromium through
# Playwright; Playwright never downloads a browser of its own. This installs chromium with apt-get
# when it is missing and we are root with apt-get; otherwise it says what is missing (the test then
# skips, or fails under CI=true). Never fails itself.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium with apt-get for the dashboard's browser test ..." >&2
  log=$(mktemp)
  if { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
    >"$log" 2>&1; then
    rm -f "$log"
    exit 0
  fi
  echo "chromium could not be installed (apt-get output: $log)" >&2
else
  echo "chromium is missing and cannot be installed here (needs root and apt-get)" >&2
fi
exit 0
