"""Course tooling for an nbgrader course: release, check, demo and autograde.

A thin layer over nbgrader's Python API (NbGraderAPI, Gradebook). Each module does one job:
`course` finds things, `notebooks` reads and edits notebooks, `catalogue` loads the wrong answers,
`release` publishes and checks for leaks, `grading` runs autograde and reads scores, `sampleclass`
builds the class that `check` and `demo` grade, `autograde` grades the real class.
"""
