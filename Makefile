# Sparse activation course: one Makefile, four targets a newcomer needs.
#   make book       build the website into _build/html (executes every notebook; a cell that
#                   raises, a broken reference or any warning fails the build)
#   make test       run the test suite (CI runs `make book` then `make test`, see .ci/run)
#   make grade      grade your exercises/ notebooks (make grade NB=exercises/formats.ipynb for one)
#   make exercises  regenerate exercises/ from solutions/
# and for contributors:
#   make notebooks CHAPTERS=book/fast/formats.ipynb   execute chapters with nbval (default: all)
#   make gpu        on one GPU: the GPU tests and benchmarks (tools/gpu_check.sh, < 8 minutes)
# The first target run creates .venv and installs everything; later runs skip that step
# unless requirements.txt or pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     ?= exercises
CHAPTERS ?= book
JOBS   ?= 2

.PHONY: all book test notebooks grade exercises bench gpu clean
all: test

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# MathJax, require.js and the ipywidgets HTML manager, served from the site itself so that
# math and widgets render with no internet access (see shared toolchain notes).
_vendor/.stamp: tools/vendor.sh
	bash tools/vendor.sh
	@touch $@

book: $(STAMP) _vendor/.stamp
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "Site: $(CURDIR)/_build/html/index.html"

# The book's notebooks are executed by `make book` (a raising cell fails it), not here: CI
# would otherwise run each of them twice. `make notebooks` runs them under nbval on demand.
test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider tests

notebooks: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=600 $(CHAPTERS)

grade: $(STAMP)
	$(PY) -m course_lib.grade $(NB)

exercises: $(STAMP)
	$(PY) -m course_lib.exercises

bench: $(STAMP)
	$(PY) -m course_lib.bench spmm --quick
	$(PY) -m course_lib.bench ffn --quick

# on a machine with one GPU: the GPU tests and benchmarks in under 8 minutes, CSVs into
# book/fast/data/gpu/ (GPU_CHECK_ARGS=--dry-run: the same steps on the CPU, Triton interpreter)
gpu:
	bash tools/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf _build _vendor
