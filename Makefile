# geotwin — the two commands: `make demo` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_SIZE ?= medium
HOST ?= 127.0.0.1
PORT ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test setup system venv assets style-assets web-assets db demo-data serve bench clean-db

demo: setup db demo-data serve

test: setup db
	$(BIN)/python -m pytest -q tests --durations=25

setup: system venv assets

# Browser libraries and node tools from npm, pinned by package-lock.json; served or run locally.
assets: node_modules/.installed style-assets web-assets

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Map-style glyphs (fontnik over Debian's Noto Sans) and sprites (maki icons via resvg) into
# .geotwin/assets; skipped when its inputs are unchanged (styles/assets.py).
style-assets: node_modules/.installed $(VENV)/.installed
	$(BIN)/python -m styles.assets build

# The web clients' browser libraries (maplibre-gl, cesium, @turf/turf) copied from node_modules into
# .geotwin/assets/web/vendor, served at /vendor/; skipped when the npm versions are unchanged.
web-assets: node_modules/.installed $(VENV)/.installed
	$(BIN)/python -m web build

system:
	@bash scripts/setup-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

db:
	$(BIN)/geotwin db up

demo-data:
	$(BIN)/geotwin demo build --size $(DEMO_SIZE)
	$(BIN)/geotwin cim build
	$(BIN)/geotwin cim build-underground
	@test -n "$$($(BIN)/geotwin supervise runs --json | tr -d '[] \n')" || $(BIN)/geotwin supervise run \
	  --as-of $$($(BIN)/python -c "import json; print(json.load(open('.geotwin/demo/$(DEMO_SIZE)/manifest.json'))['reference_date'])")
	$(BIN)/geotwin demo keys

# The server, with the sensing room's MQTT broker (Debian's mosquitto, `geotwin mqtt up`) and one
# ingestion worker (stores what devices publish, evaluates the alert rules) beside it.
serve:
	$(BIN)/geotwin mqtt up
	@echo "geotwin on http://$(HOST):$(PORT)/ (Ctrl-C stops it); MQTT on $$($(BIN)/python -c 'from spatial_api.config import get_settings; print(get_settings().mqtt_url)')"
	@trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/geotwin mqtt worker & worker=$$!; \
	  $(BIN)/geotwin serve --host $(HOST) --port $(PORT)

bench: setup db
	$(BIN)/python bench/ingest.py --runs 4

clean-db:
	-$(BIN)/geotwin db down
	rm -rf .geotwin/db
