"""Course tooling for an nbgrader course: release, check, demo and autograde.

A thin layer over nbgrader's Python API (NbGraderAPI, Gradebook). Each module does one job:
`course` finds things, `notebooks` reads and edits notebooks, `catalogue` loads the wrong answers,
`release` publishes and finds leaks, `nbgrader_api` runs nbgrader on one course root (grades one student,
reads their scores), `gradebook` is the one module that opens nbgrader's gradebook, `sandbox` starts
grading kernels under bubblewrap, `execution` keeps a hostile notebook from costing more than its own points,
and with `proxy` and `split` runs every test cell in a kernel of its own, so that it cannot earn points its tests
did not give, `submissions` says what is wrong with a submission
folder (`triage`), `sampleclass` builds the class that `check` and `demo` grade and judges its grades, and
`autograde` grades the real class.
"""

import sys

# jsonschema, which nbformat validates notebooks with, imports rfc3987_syntax when it is installed
# (jupyter-events asks for it), and that module compiles a grammar at import: about 1 s in every grading
# process (the CLI, the fork server of its workers, each check). It only checks the "iri" string formats,
# which no notebook schema uses, so coursegrader's processes treat it as not installed.
sys.modules.setdefault("rfc3987_syntax", None)
