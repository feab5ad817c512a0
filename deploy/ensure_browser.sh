#!/bin/sh
# Make sure headless Chromium and its WebDriver are installed (Debian packages).
# Idempotent: does nothing when both are present. Installing needs root (apt-get);
# exits non-zero with a clear message when that is not possible.
set -eu

CHROMIUM="${FLYWHEEL_CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${FLYWHEEL_CHROMEDRIVER:-/usr/bin/chromedriver}"

if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "ensure_browser: $CHROMIUM or $CHROMEDRIVER missing and not root;" \
       "run: sudo apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  echo "ensure_browser: apt-get finished but $CHROMIUM / $CHROMEDRIVER still missing" >&2
  exit 1
fi
echo "ensure_browser: installed $("$CHROMIUM" --version 2>/dev/null)"
