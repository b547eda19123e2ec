"""A/B timing of the reference solution's autograde between two checkouts of this repository.

    python docs/bench/ab_reference.py OLD_TREE NEW_TREE ASSIGNMENT... [--reps 2]

For each assignment, `reps` times, alternating old and new: in a scratch course built from that tree (its own
notebooks and code), grade the reference solution `copies` times in one process, sandboxed, and print the
seconds `Grader.autograde` took for each, then the CPU time of the whole run (the grader, its kernels and
the tests' kernels' template, which all end with it) divided by `copies`. The first grading of a process pays
for what a grading process starts once (the template, cold caches); the others are what each further student
costs. Wall-clock times need a quiet machine; CPU time is what a class graded on every core costs, and moves
much less when the machine is shared.
"""

import argparse
import os
import resource
import subprocess
import sys

ONE = """
import sys, tempfile
from pathlib import Path
from coursegrader.course import Course
from coursegrader.grading import Grader, make_scratch_course
from coursegrader import sampleclass
aid, tree = sys.argv[1], Path(sys.argv[2])
course = Course.load(tree)
with tempfile.TemporaryDirectory() as d:
    root = make_scratch_course(course, Path(d) / aid, [aid])
    grader = Grader(course, root)
    grader.generate(aid)
    results = [r for _, r in sampleclass.grade(course, grader, sampleclass.plan(course, aid)[:1] * int(sys.argv[3]))]
    print(" ".join(f"{r.seconds:.1f}" for r in results), f"{results[0].score:g}/{results[0].max_score:g}")
"""

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
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run([sys.executable, "-c", ONE, aid, tree, str(args.copies)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": tree})
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.copies
            print(aid, label, rep, done.stdout.strip() or done.stderr.strip().splitlines()[-1],
                  f"cpu {cpu:.1f} s per notebook", flush=True)
