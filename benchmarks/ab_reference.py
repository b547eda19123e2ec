"""A/B timing of the reference solution's autograde between two checkouts of this repository.

    python docs/bench/ab_reference.py OLD_TREE NEW_TREE ASSIGNMENT... [--reps 2]

For each assignment, `reps` times, alternating old and new: in a scratch course built from that tree (its own
notebooks and code), grade the reference solution `copies` times in one process, sandboxed, and print the
seconds `Grader.autograde` took for each, then the CPU time of the whole run (the grader, its kernels and
the tests' kernels' template; a cgroup of its own, as root) divided by `copies`. The first grading of a process pays
for what a grading process starts once (the template, cold caches); the others are what each further student
costs. Wall-clock times need a quiet machine; CPU time is what a class graded on every core costs, and moves
much less when the machine is shared.

Each run imports coursegrader from its tree (PYTHONPATH, and the tree as the working folder, which `python -c`
puts first on its path). Trees older than d1b6a3a start every kernel through `python -I -m coursegrader.sandbox`,
and `-I` ignores PYTHONPATH: their kernels would run the installed coursegrader (this checkout's), which has no
launcher any more. Compare with such a tree from a virtual environment whose coursegrader is that tree (a copy of
.venv with a `.pth` file naming it), run with that environment's Python.
"""

import argparse
import os
import subprocess
import sys

ONE = """
import sys, tempfile
from pathlib import Path
from coursegrader.course import Course
from coursegrader import sampleclass
try:
    from coursegrader.nbgrader_api import Grader
except ImportError:  # a checkout from before grading.py became nbgrader_api.py
    from coursegrader.grading import Grader, make_scratch_course
aid, tree = sys.argv[1], Path(sys.argv[2])
course = Course.load(tree)
with tempfile.TemporaryDirectory() as d:
    if hasattr(course, "make_scratch_course"):
        root = course.make_scratch_course(Path(d) / aid, [aid]).root
    else:
        root = make_scratch_course(course, Path(d) / aid, [aid])
    grader = Grader(course, root)
    grader.generate(aid)
    results = [r for _, r in sampleclass.grade(course, grader, sampleclass.plan(course, aid)[:1] * int(sys.argv[3]))]
    print(" ".join(f"{r.seconds:.1f}" for r in results), f"{results[0].score:g}/{results[0].max_score:g}")
"""

class cpu_meter:
    """CPU seconds used by a process and everything it starts, kernels in their sandboxes included: a cgroup v1
    cpuacct group of its own (as root). resource.getrusage would miss the kernels, which are killed, never
    waited for. seconds stays 0 where no cgroup can be made."""

    ROOT = "/sys/fs/cgroup/cpuacct"

    def __enter__(self):
        self.seconds, self.group = 0.0, None
        try:
            self.group = os.path.join(self.ROOT, f"ab-reference-{os.getpid()}")
            os.makedirs(self.group, exist_ok=True)
        except OSError:
            self.group = None
        return self

    def enter(self) -> None:  # in the child, before it runs
        if self.group:
            with open(os.path.join(self.group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def __exit__(self, *exc):
        if self.group:
            with open(os.path.join(self.group, "cpuacct.usage")) as f:
                self.seconds = int(f.read()) / 1e9
            os.rmdir(self.group)


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("old")
parser.add_argument("new")
parser.add_argument("assignments", nargs="+")
parser.add_argument("--reps", type=int, default=2)
parser.add_argument("--copies", type=int, default=3)
args = parser.parse_args()
for aid in args.assignments:
    for rep in range(1, args.reps + 1):
        for label, tree in (("old", args.old), ("new", args.new)):
            tree = os.path.abspath(tree)
            with cpu_meter() as meter:
                done = subprocess.run([sys.executable, "-c", ONE, aid, tree, str(args.copies)], capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": tree}, cwd=tree, preexec_fn=meter.enter)
            print(aid, label, rep, done.stdout.strip() or done.stderr.strip().splitlines()[-1],
                  f"cpu {meter.seconds / args.copies:.1f} s per notebook" if meter.seconds else "", flush=True)
