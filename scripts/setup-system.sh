#!/usr/bin/env bash
# Installs the system packages geotwin needs, only those missing (idempotent).
# Debian / Ubuntu: PostgreSQL + PostGIS (unless DATABASE_URL points at an external PostGIS),
# GDAL's command-line tools (ogr2ogr: benchmarks and end-to-end checks), Python's venv.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv python3-pip)
fi
if [ -z "${DATABASE_URL:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    need+=(postgresql)
  fi
  if ! ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1; then
    need+=(postgresql-postgis)
  fi
fi
have_cmd ogr2ogr || need+=(gdal-bin)
have_cmd psql || need+=(postgresql-client)
# Node.js + npm: browser libraries and node tools (style validator, glTF validator) from npm.
have_cmd node || need+=(nodejs)
have_cmd npm || need+=(npm)
# Noto Sans: the Latin glyph ranges of the map styles are generated from it (make assets).
[ -f /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf ] || need+=(fonts-noto-core)
# Mosquitto: the MQTT broker of the sensing room (geotwin mqtt up runs its own instance).
have_cmd mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# ... and the headers and compiler for its geotwin plugin ($select in SensorThings MQTT topics).
[ -f /usr/include/mosquitto_plugin.h ] || need+=(mosquitto-dev)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
have_cmd cc || need+=(gcc libc6-dev)
# Chromium: the web clients' end-to-end tests drive it headless (Python playwright, no browser download).
have_cmd chromium || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

echo "system packages: installing ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if have_cmd sudo; then SUDO="sudo"; else
    echo "error: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a system cluster on install; geotwin runs its own and does not need it.
echo "system packages: done"
