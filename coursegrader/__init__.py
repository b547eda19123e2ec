"""Course tooling for an nbgrader course: release, check, demo and autograde.

A thin layer over nbgrader's Python API (NbGraderAPI, Gradebook). Each module does one job:
`course` finds things, `notebooks` reads and edits notebooks, `catalogue` loads the wrong answers,
`release` publishes and checks for leaks, `grading` runs autograde and reads scores, `sandbox` starts
grading kernels under bubblewrap, `execution` and `integrity` keep a hostile notebook from costing more than
its own points or earning points its tests did not give, `submissions` says what is wrong with a submission
folder, `sampleclass` builds the class that `check` and `demo` grade, `autograde` grades the real class.
"""
