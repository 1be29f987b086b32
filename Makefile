# jaxnets — every target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# a pip constraints file for the dev install (CI passes .ci/floors.txt: the floors of pyproject.toml, pinned)
CONSTRAINTS ?=

.DEFAULT_GOAL := help
.PHONY: help install test lint demo bench bento clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install jaxnets with its dev tools

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check jaxnets tests service examples tools

test: lint  ## ruff + the whole pytest suite (exit code 5, "no tests ran", counts as a failure)
	$(PY) -m pytest -q tests

demo: $(STAMP)  ## train LeNet-5 on the embedded digits, package it, serve it, query it over HTTP
	$(PY) -m jaxnets.demo

TORCH_PY ?= ../.torchpeer/bin/python
TORCH_PEER ?= ../shared/bench/torch_peer.py

bench: $(STAMP)  ## run the standard benchmark set (beside the PyTorch peer if TORCH_PY/TORCH_PEER exist) into BENCHMARKS.md
	$(PY) tools/bench_suite.py --out BENCHMARKS.md --peer $(TORCH_PEER) --torch-python $(TORCH_PY)

bento: $(STAMP)  ## build a Bento (service + jaxnets wheel + the packaged model) from service/
	rm -rf service/wheels && $(PY) -m pip wheel -q --no-deps -w service/wheels .
	cd service && ../$(VENV)/bin/bentoml build

clean:  ## remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache runs build dist *.egg-info
