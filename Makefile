# Sparse activation course: one Makefile, four targets a newcomer needs.
#   make book       build the website into _build/html (executes every notebook)
#   make test       run the whole test suite (what CI runs through .ci/run)
#   make grade      grade your exercises/ notebooks (make grade NB=exercises/formats.ipynb for one)
#   make exercises  regenerate exercises/ from solutions/
# The first target run creates .venv and installs everything; later runs skip that step
# unless requirements.txt or pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     ?= exercises
JOBS   ?= 2

.PHONY: all book test grade exercises bench clean
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

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadfile -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=600 tests book

grade: $(STAMP)
	$(PY) -m course_lib.grade $(NB)

exercises: $(STAMP)
	$(PY) -m course_lib.exercises

bench: $(STAMP)
	$(PY) -m course_lib.bench spmm --quick
	$(PY) -m course_lib.bench ffn --quick

clean:
	rm -rf _build _vendor
