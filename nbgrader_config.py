"""nbgrader configuration of the course.

Read by the nbgrader command line and by `coursegrader`, which loads this file and only overrides
`CourseDirectory.root` when it grades in a scratch directory.
"""

c = get_config()  # noqa: F821  (nbgrader provides get_config when it executes this file)

c.CourseDirectory.course_id = "deep-generative-models"

# Files nbgrader never copies between folders: its defaults, plus coursegrader's integrity findings, which
# stay with the TA (reports/) instead of travelling into students' feedback folders.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.integrity.json"]

# Autograding runs student code: on every path (nbgrader autograde, the formgrader's Autograde button,
# coursegrader autograde/check/demo) nbgrader's Execute is replaced by four preprocessors (coursegrader/safety.py):
# NotebookTimeLimit (5 x the assignment's budget in course.toml for the whole notebook; another run, in fresh
# kernels, without a cell that killed or hung the kernel), CapOutputs (outputs capped while they arrive),
# GuardedExecute (the tests in a kernel of their own; every kernel in a bubblewrap sandbox) and SaveFindings (what
# the TA should know). The rest of the list is nbgrader's own. The exporter refuses to start a run, and grades
# nobody, when the guards are not all there or no sandbox can be had. Opt-out, for trusted notebooks on a machine
# without bubblewrap only:
#     nbgrader autograde ASSIGNMENT --GuardedExecute.sandbox=False      (coursegrader: --no-sandbox)
from coursegrader.safety import autograde_preprocessors  # noqa: E402

c.Autograde.exporter_class = "coursegrader.safety.GuardedExporter"
c.Autograde.autograde_preprocessors = autograde_preprocessors()
# A cell a student copied and pasted (a second cell with a grade_id) is graded as their own code, not a crash.
c.Autograde.sanitize_preprocessors = [
    "nbgrader.preprocessors.ClearOutput",
    "nbgrader.preprocessors.DeduplicateIds",
    "coursegrader.sanitize.ForgetStrayCells",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "nbgrader.preprocessors.OverwriteCells",
    "nbgrader.preprocessors.CheckCellMetadata",
]

# Time limit for one cell while autograding, in seconds. The slowest cells of the course (training a
# small VAE or GAN) take about 20 s on a 2-core CPU; a cell that hangs is stopped and scores 0.
c.Execute.timeout = 120

# nbgrader gives 0 to a test cell that writes anything to stderr. torch and matplotlib write warnings
# there that say nothing about the answer; drop those outputs before grading.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?m)(\b[A-Z]\w*Warning: |^\[W\d)"

# A student who deletes a test cell does not escape it: autograde puts it back and grades it.
c.OverwriteCells.add_missing_cells = True

# What students see in place of a solution.
c.ClearSolutions.code_stub = {
    "python": (
        "# YOUR CODE HERE: replace the line below with your answer.\n"
        'raise NotImplementedError("Exercise not answered yet: replace this line with your code.")'
    )
}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Written answers (manually graded markdown cells) have a mark scheme for the TA in the locked, read-only cell
# right after them, between "### BEGIN MARK SCHEME" and "### END MARK SCHEME". generate_assignment removes it from
# the release (ClearMarkScheme) after the gradebook has recorded the whole locked cell, so autograde's
# OverwriteCells puts it back and the formgrader shows it under the answer; feedback drops it (below). nbgrader insists that such a cell is a
# "task" cell, which would add a second grade for a TA to give; a read-only cell with a grade_id is restored just as
# well, so the check is off (tests/test_assignments.py holds every mark scheme to a locked cell instead).
c.ClearMarkScheme.enforce_metadata = False

# Feedback shows students which test failed and its message, never the hidden tests' code
# (coursegrader/feedback.py; nbgrader alone renders them, its issues 917 and 1363), and never the mark schemes
# that autograde restored for the formgrader (nbgrader's feedback keeps them).
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "coursegrader.feedback.HideHiddenTests",
    "coursegrader.feedback.HideMarkSchemes",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
