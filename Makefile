# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TOOL   := $(BIN)/coursegrader

.PHONY: demo test lab release check autograde bench venv constraints clean

demo: $(STAMP)          ## grade a sample class (reference, blank, catalogue mistakes) and print the scores
	$(TOOL) demo

test: $(STAMP)          ## the whole test suite (what CI runs)
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

bench: $(STAMP)         ## time grading 20 students per assignment: plain nbgrader vs --jobs 1 vs --jobs <cores> vs the floor
	$(BIN)/python benchmarks/bench.py $(ASSIGNMENT) $(if $(STUDENTS),--students $(STUDENTS))

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
