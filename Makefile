# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOL   := $(BIN)/coursegrader

PROXY  := hub/node_modules/.bin/configurable-http-proxy

.PHONY: demo test lab release check autograde bench hub hub-remove venv constraints clean

demo: $(STAMP)          ## grade a sample class (reference, blank, catalogue mistakes) and print the scores
	$(TOOL) demo

test: $(STAMP)          ## the whole test suite (what CI runs)
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(PROXY); \
	  else echo "make test: no npm, so no JupyterHub proxy: tests/test_hub.py will be skipped (CI installs npm)"; fi
	$(BIN)/python -m pytest

lab: $(STAMP)           ## JupyterLab as a student sees it (release/); make lab ROLE=lecturer: source/ with nbgrader's tools
	@case "$(ROLE)" in ""|student) $(TOOL) lab ;; lecturer) $(TOOL) lab --lecturer ;; \
	  *) echo "make lab: ROLE is student (the default) or lecturer, not '$(ROLE)'"; exit 2 ;; esac

release: $(STAMP)       ## regenerate release/ from source/ and check it for leaks
	$(TOOL) release

check: $(STAMP)         ## reference full marks, blank zero, catalogue caught, release in sync, time budgets
	$(TOOL) check

autograde: $(STAMP)     ## autograde submitted/ for one assignment: make autograde ASSIGNMENT=01_mle_kl
	@test -n "$(ASSIGNMENT)" || { echo "usage: make autograde ASSIGNMENT=<assignment id>"; exit 2; }
	$(TOOL) autograde $(ASSIGNMENT)

bench: $(STAMP)         ## time grading 20 students per assignment, then the small class (8 of 02_elbo): plain nbgrader vs --jobs 1 vs --jobs <cores> vs the floor; SMALL=1: the small class only
	$(BIN)/python benchmarks/bench.py $(if $(SMALL),--small,$(ASSIGNMENT) $(if $(STUDENTS),--students $(STUDENTS)))

hub: $(STAMP) $(PROXY)  ## a JupyterHub for the course on port 8000 (as root: makes its users; docs/hub.md)
	$(BIN)/python -m coursegrader.hub start $(if $(PORT),--port $(PORT))

hub-remove:             ## remove the users `make hub` made and its state folder .hub/
	$(BIN)/python -m coursegrader.hub remove

$(PROXY): hub/package.json hub/package-lock.json
	@command -v npm >/dev/null || { echo "make hub: npm is missing (Debian: apt-get install npm)"; exit 2; }
	cd hub && npm ci --no-audit --no-fund --loglevel=error
	@touch $(PROXY)

venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

constraints: $(STAMP)   ## re-pin the transitive dependencies after changing requirements.txt
	$(BIN)/python -m pip freeze --exclude-editable \
	  | grep -viE "^($$(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1/p' requirements.txt | paste -sd'|'))==" \
	  | sed '1i # Transitive dependencies, pinned (pip freeze of a working .venv, minus requirements.txt'"'"'s own lines).\n# Regenerate with: make constraints' > constraints.txt

clean:                  ## remove what the tools made (not the venv, not student data)
	rm -rf demo bench reports .pytest_cache
