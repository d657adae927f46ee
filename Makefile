# viva-pipelines: `make demo` and `make test` work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# A persistent local Dagster instance, so `make dev` shows what `make demo` materialized.
export DAGSTER_HOME := $(CURDIR)/.dagster
# Nothing may download weights or data at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test rehearsal chromium dev mlflow lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,sam2-runtime,prod]'
	# SAM 2 ships as an sdist that compiles CUDA code and pulls torchvision, which must never be installed on CPU machines:
	# build it without either, against the torch already installed.
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps sam2==1.1.0
	touch $@

install: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

demo: install
	@start=$$(date +%s); \
	$(BIN)/viva demo-data && \
	$(BIN)/viva ingest && \
	$(BIN)/viva materialize qc_dataset instructor_model sft_checkpoint reward_models grpo_lora \
		benchmark_suite benchmark_scores edited_videos && \
	$(BIN)/viva report && \
	echo "demo materialized in $$(( $$(date +%s) - start ))s" && \
	echo "" && \
	echo "Dagster UI:  make dev     (then open http://127.0.0.1:3000)" && \
	echo "MLflow UI:   make mlflow  (then open http://127.0.0.1:5000)"

# Two workers: the suite's tests mostly keep one core busy (subprocesses, services, one-thread
# training), so two of them share a 2-core machine: 792 s and 825 s against 1214 s in one
# process on 2-core AMD EPYC machines without AVX-512. Work stealing keeps a worker from idling
# while the other still holds queued tests. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2

test: install chromium
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

# The production graph as one piece at toy sizes (conf/rehearsal) on PostgreSQL, S3 (moto), an
# MLflow server and `viva vlm-serve`: the CI test that runs it, with its timing printed.
rehearsal: install
	$(BIN)/pytest -q -s -p no:cacheprovider tests/test_prod_services.py -k rehearsal

# The browser test of the Dagster UI (tests/test_ui_browser.py) runs Debian's Chromium through
# Playwright, which never downloads a browser of its own. Installed when missing and root;
# otherwise a note, and that test skips (it fails instead on CI, where CI=true).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian's chromium for tests/test_ui_browser.py (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
			|| echo "note: could not install chromium; tests/test_ui_browser.py will skip"; \
	else \
		echo "note: /usr/bin/chromium is missing and we are not root, so it is not installed;"; \
		echo "      tests/test_ui_browser.py will skip (sudo apt-get install chromium to run it)"; \
	fi

dev: install
	$(BIN)/dagster dev -w workspace.yaml

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri "$$($(BIN)/python -c 'from viva_pipelines.settings import get_settings; print(get_settings().mlflow_tracking_uri)')"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf data .dagster
