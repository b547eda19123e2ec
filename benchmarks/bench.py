"""`make bench` (`python benchmarks/bench.py`): how fast this machine grades a class, against plain nbgrader and the floor.

A synthetic class per assignment: `students` copies of the sample class (the reference, the blank release
and the wrong-answer rounds of the catalogue), each copy handed in under its own student id. The same
class is graded three times from the command line, each in a course folder of its own, one assignment
after another:

- plain `nbgrader autograde ASSIGNMENT`: serial and unsandboxed, what users have today;
- `coursegrader autograde ASSIGNMENT --jobs 1`, and `--jobs <cores>`: sandboxed, with the tests in a kernel of their own;

and the floor is measured: every distinct notebook that autograde executes (taken from the plain run's
autograded/ folder, outputs cleared) is run with nbclient in a plain kernel, kernel start included, and its
time counted once per copy; divided by the cores, that is what no grader on this machine can beat. Each is
run twice, right after the plain run and again after the coursegrader runs, and the shorter time is kept:
a floor is a lower bound, and a shared machine has slow spells (one made a floor 30% too high).

`--jobs <cores>` is compared with the floor the same way: it runs a second time, after the floor's second
measurement, and the faster of its two runs is held against the floor. A ratio whose denominator keeps the
faster of two measurements and whose numerator takes one is biased upwards by the machine's noise itself
(one notebook's time moves by up to 30% between runs here). The speed-up on plain nbgrader, measured once,
is held against the first `--jobs` run, also measured once; both runs are in the table.
All runs must write the same grades: the benchmark compares their gradebooks.

Beside that class, `make bench` grades a small one the same way (issue 20: a TA who regrades a section): the
8 submissions of 02_elbo that a section hands in (the reference, the blank release and six wrong answers of the
catalogue, one each, spread over it), where each run's fixed start weighs most. Its target is the speed-up on
plain nbgrader alone (1.7x); its floor is reported, not held to a target. `make bench SMALL=1` (`--small`) runs
only the small class, `--no-small` only the big one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from coursegrader import sampleclass
from coursegrader.course import CONFIG_FILE, COURSE_FILE, Course
from coursegrader.errors import CourseError
from coursegrader.gradebook import snapshot
from coursegrader.upstream import NotebookClientHooks
from coursegrader.nbgrader_api import Grader
from coursegrader.table import render

TARGET_SPEEDUP = 1.7  # at least this much faster than plain nbgrader (2 cores)
TARGET_FLOOR = 1.3  # at most this much slower than the floor
TARGET_MEMORY_MIB = 1536  # per worker
SMALL_CLASS = ("02_elbo", 6)  # the small class: this assignment's reference, blank release and this many wrong answers
TARGET_SMALL_SPEEDUP = 1.7  # the small class, --jobs <cores> on plain nbgrader

RUNS = ("plain", "jobs1", "jobsN", "jobsN-again")


@dataclass
class AssignmentBench:
    assignment: str
    students: int
    seconds: dict[str, float] = field(default_factory=dict)  # run -> wall seconds
    memory_mib: dict[str, float] = field(default_factory=dict)  # tool run -> peak memory per worker
    notebook_seconds: float = 0.0  # sum over the class of each notebook's own execution time
    distinct: dict[str, float] = field(default_factory=dict)  # variant -> its own execution time (the shorter)
    distinct_runs: dict[str, list[float]] = field(default_factory=dict)  # variant -> both measurements
    same_grades: bool = False
    stalls: list[float] = field(default_factory=list)  # plain nbgrader's waits on a reply it missed (see stalls())


# Appended to the plain run's nbgrader_config.py: nbgrader's own Execute, unguarded and unsandboxed (our own
# notebooks only: the reference, the blank release and the catalogue's wrong answers).
PLAIN_NBGRADER = ("\n# coursegrader bench: the plain baseline grades as nbgrader ships.\n"
                  "from coursegrader.safety import as_nbgrader_ships\nas_nbgrader_ships(c)\n")


def small_plan(course: Course, aid: str, wrong: int) -> list[sampleclass.Submission]:
    """The small class: the reference, the blank release and `wrong` of the catalogue's wrong answers, one per
    submission, spread evenly over the catalogue (not all on its first exercise)."""
    reference, blank, *entries = sampleclass.plan(course, aid, exact=True)
    if len(entries) < wrong:
        raise CourseError(f"the small class needs {wrong} wrong answers of {aid}; its catalogue has {len(entries)}")
    picks = sorted({round(k * (len(entries) - 1) / max(wrong - 1, 1)) for k in range(wrong)})
    return [reference, blank, *(entries[i] for i in picks)]


def build_class(course: Course, aids: list[str], students: int, dest: Path,
                plans: dict[str, list[sampleclass.Submission]] | None = None) -> dict[str, dict[str, list[str]]]:
    """The synthetic class in dest/base: per assignment, variant -> the ids of the students who hand it in.
    `plans`: the submissions to copy, per assignment (default: the sample class, sampleclass.plan)."""
    base = course.make_scratch_course(dest / "base", aids).root
    shutil.copy2(course.root / COURSE_FILE, base / COURSE_FILE)
    grader = Grader(course, base, sandbox=False)  # nothing is executed: only releases are generated
    copies: dict[str, dict[str, list[str]]] = {}
    for aid in aids:
        grader.generate(aid)
        plan = (plans or {}).get(aid) or sampleclass.plan(course, aid)
        copies[aid] = {sub.student: [] for sub in plan}
        for i in range(students):
            sub = plan[i % len(plan)]
            student = f"{aid[:2]}-s{i + 1:03d}"
            sampleclass.hand_in(course, base, replace(sub, student=student))
            copies[aid][sub.student].append(student)
    for run in RUNS:
        shutil.copytree(base, dest / run)
    with (dest / "plain" / CONFIG_FILE).open("a") as config:  # the baseline: nbgrader as it ships, said explicitly
        config.write(PLAIN_NBGRADER)
    return copies


def timed(command: list[str], cwd: Path, log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise CourseError(f"{' '.join(command[-4:])} failed (exit code {done.returncode}); see {log}")
    return seconds


class FloorClient(NotebookClientHooks, NotebookClient):
    """Plain nbclient, except that it polls in short slices: a reply that pyzmq misses (see stalls) would
    otherwise add a whole cell timeout to the floor, which is the notebook's own time and nothing else."""


def own_time(notebook: Path) -> float:
    """Seconds to start a plain kernel and run the notebook autograde ran (outputs cleared); the kernel is then
    killed, as coursegrader does, so stopping it is not counted."""
    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = FloorClient(nb, timeout=300, kernel_name="python3", allow_errors=True, shutdown_kernel="immediate",
                         resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    client.execute(stderr=subprocess.DEVNULL)  # a plain kernel: its start-up warnings are not the bench's
    return time.perf_counter() - start


def stalls(notebook: Path, longer_than: float = 60.0) -> list[float]:
    """Seconds the grader sat idle between two cells (kernel done, next cell not sent) in an autograded notebook.

    pyzmq's asyncio poll sometimes misses a reply, and nbclient then waits out the whole cell timeout
    (coursegrader polls in slices, see upstream.poll_in_slices). The benchmark reports plain nbgrader's
    time with and without these waits, and holds the targets against the time without them."""
    nb = nbformat.read(str(notebook), as_version=4)
    found, previous = [], None
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.status.busy" not in timing:
            continue
        start = datetime.fromisoformat(timing["iopub.status.busy"].rstrip("Z"))
        if previous is not None and (start - previous).total_seconds() > longer_than:
            found.append(round((start - previous).total_seconds(), 1))
        previous = datetime.fromisoformat(timing.get("shell.execute_reply", timing["iopub.status.busy"]).rstrip("Z"))
    return found


def bench_assignment(aid: str, copies: dict[str, list[str]], dest: Path, jobs: int) -> AssignmentBench:
    bindir = Path(sys.executable).parent
    result = AssignmentBench(aid, sum(map(len, copies.values())))
    log = dest / "bench.log"
    result.seconds["plain"] = timed([str(bindir / "nbgrader"), "autograde", aid], dest / "plain", log)
    for students in copies.values():
        for student in students:
            result.stalls += stalls(dest / "plain" / "autograded" / student / aid / f"{aid}.ipynb")
    result.seconds["steady"] = result.seconds["plain"] - sum(result.stalls)
    variants = {variant: students for variant, students in copies.items() if students}
    executed = {v: dest / "plain" / "autograded" / students[0] / aid / f"{aid}.ipynb" for v, students in variants.items()}
    result.distinct_runs = {v: [round(own_time(nb), 2)] for v, nb in executed.items()}
    def grade(run: str, n: int) -> None:
        tool = [sys.executable, "-m", "coursegrader", "autograde", aid, "--jobs", str(n)]
        result.seconds[run] = timed(tool, dest / run, log)
        summary = json.loads((dest / run / "reports" / aid / "run.json").read_text())
        result.memory_mib[run] = summary["peak_memory_mib_per_worker"]

    grade("jobs1", 1)
    grade("jobsN", jobs)
    for variant, students in variants.items():
        result.distinct_runs[variant].append(round(own_time(executed[variant]), 2))
        result.distinct[variant] = min(result.distinct_runs[variant])
        result.notebook_seconds += result.distinct[variant] * len(students)
    grade("jobsN-again", jobs)
    grades = [snapshot(f"sqlite:///{dest / run}/gradebook.db", aid) for run in RUNS]
    result.same_grades = all(g == grades[0] for g in grades) and len(grades[0]) == result.students
    return result


@dataclass
class Bench:
    cores: int
    jobs: int
    students: int
    assignments: list[AssignmentBench]
    timeout: float = 120.0  # the course's cell timeout: what one stall costs plain nbgrader
    small: bool = False  # the small class: its target is the speed-up on plain nbgrader alone

    def total(self, run: str) -> float:
        """Seconds of `run` over all assignments; "jobsN-best" takes the faster --jobs N run of each assignment."""
        if run == "jobsN-best":
            return sum(min(a.seconds["jobsN"], a.seconds["jobsN-again"]) for a in self.assignments)
        return sum(a.seconds[run] for a in self.assignments)

    @property
    def submissions(self) -> int:
        return sum(a.students for a in self.assignments)

    @property
    def floor(self) -> float:
        return sum(a.notebook_seconds for a in self.assignments) / self.cores

    def memory(self, run: str) -> float:
        return max(a.memory_mib[run] for a in self.assignments)

    def targets(self) -> dict[str, tuple[float, str, float, bool]]:
        """name -> (measured, comparison, target, met)."""
        speedup = self.total("steady") / self.total("jobsN")
        floor = self.total("jobsN-best") / self.floor
        memory = max(self.memory(run) for run in RUNS[1:])
        same = all(a.same_grades for a in self.assignments)
        if self.small:
            return {
                f"small class: --jobs {self.jobs} is faster than plain nbgrader (without its stalls) by":
                    (speedup, ">=", TARGET_SMALL_SPEEDUP, speedup >= TARGET_SMALL_SPEEDUP),
                "small class: peak memory per worker (MiB)": (memory, "<", TARGET_MEMORY_MIB, memory < TARGET_MEMORY_MIB),
                "small class: all runs wrote the same grades": (float(same), "=", 1.0, same),
            }
        return {
            f"--jobs {self.jobs} is faster than plain nbgrader (without its stalls) by": (speedup, ">=", TARGET_SPEEDUP, speedup >= TARGET_SPEEDUP),
            f"--jobs {self.jobs} (the faster of its two runs) takes the floor's time times": (floor, "<=", TARGET_FLOOR, floor <= TARGET_FLOOR),
            "peak memory per worker (MiB)": (memory, "<", TARGET_MEMORY_MIB, memory < TARGET_MEMORY_MIB),
            "all runs wrote the same grades": (float(same), "=", 1.0, same),
        }

    @property
    def met(self) -> bool:
        return all(ok for *_, ok in self.targets().values())

    def as_json(self) -> dict:
        rows = {label: self._row(run) for run, label in self._labels().items()}
        return {
            "machine": {"cores": self.cores, "cpu": _cpu_model(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "class": "small" if self.small else "per assignment",
            "students_per_assignment": self.students, "submissions": self.submissions, "jobs": self.jobs,
            "runs": rows,
            "targets": {name: {"measured": round(m, 3), "comparison": op, "target": t, "met": ok}
                        for name, (m, op, t, ok) in self.targets().items()},
            "assignments": [asdict(a) for a in self.assignments],
        }

    def _labels(self) -> dict[str, str]:
        n = sum(len(a.stalls) for a in self.assignments)
        return {"plain": "nbgrader autograde (plain, serial)",
                "steady": f"  the same without its {n} stall(s) of ~{self.timeout:g} s",
                "jobs1": "coursegrader autograde --jobs 1",
                "jobsN": f"coursegrader autograde --jobs {self.jobs}",
                "jobsN-again": f"  --jobs {self.jobs} again, after the floor's second measurement",
                "jobsN-best": "  the faster of the two, per assignment", "floor": f"floor: notebook time / {self.cores} cores"}

    def _row(self, run: str) -> dict:
        seconds = self.floor if run == "floor" else self.total(run)
        return {"seconds": round(seconds, 1), "per_minute": round(60 * self.submissions / seconds, 1),
                "speedup_vs_plain": round(self.total("steady") / seconds, 2),
                "times_floor": round(seconds / self.floor, 2),
                "peak_memory_mib_per_worker": self.memory(run) if run in RUNS[1:] else None}

    def format(self) -> str:
        header = ("run", "seconds", "per minute", "speed-up on plain (no stalls)", "times the floor", "peak MiB/worker")
        rows = []
        for run, label in self._labels().items():
            r = self._row(run)
            memory = "-" if r["peak_memory_mib_per_worker"] is None else f"{r['peak_memory_mib_per_worker']:,.0f}"
            rows.append((label, f"{r['seconds']:.1f}", f"{r['per_minute']:.1f}", f"{r['speedup_vs_plain']:.2f}x",
                         f"{r['times_floor']:.2f}x", memory))
        per = [(a.assignment, str(a.students), *(f"{a.seconds[run]:.1f}" for run in RUNS), str(len(a.stalls)),
                f"{a.notebook_seconds / self.cores:.1f}", "yes" if a.same_grades else "NO") for a in self.assignments]
        targets = [f"  {'met   ' if ok else 'MISSED'}  {name} {m:.2f} (target {op} {t:g})"
                   for name, (m, op, t, ok) in self.targets().items() if op != "="]
        same = all(a.same_grades for a in self.assignments)
        title = (f"The small class: {self.submissions} submissions of {self.assignments[0].assignment} (the reference, "
                 f"the blank release, {self.submissions - 2} wrong answers), {self.cores} cores:" if self.small else
                 f"{self.submissions} submissions ({self.students} per assignment), {self.cores} cores:")
        return "\n".join([
            title,
            render(header, rows), "",
            render(("assignment", "students", "plain", "--jobs 1", f"--jobs {self.jobs}", "again", "plain's stalls",
                    "floor", "same grades"), per), "",
            "Targets:" + (" (the floor is not one for the small class)" if self.small else ""), *targets,
            f"  {'met   ' if same else 'MISSED'}  all runs wrote the same grades",
        ])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(course: Course, aids: list[str], students: int, jobs: int | None, dest: Path,
        progress=print, plans: dict[str, list[sampleclass.Submission]] | None = None, small: bool = False) -> Bench:
    cores = os.cpu_count() or 1
    jobs = jobs or cores
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    progress(f"building the class: {students} students x {len(aids)} assignment(s) in {dest}")
    copies = build_class(course, aids, students, dest, plans)
    results = []
    for aid in aids:
        start = time.perf_counter()
        results.append(bench_assignment(aid, copies[aid], dest, jobs))
        r = results[-1]
        progress(f"{aid}: plain {r.seconds['plain']:.0f} s, --jobs 1 {r.seconds['jobs1']:.0f} s, "
                 f"--jobs {jobs} {r.seconds['jobsN']:.0f} s and {r.seconds['jobsN-again']:.0f} s, "
                 f"floor {r.notebook_seconds / cores:.0f} s "
                 f"({time.perf_counter() - start:.0f} s)")
    timeout = course.nbgrader_config().Execute.get("timeout", 30)
    return Bench(cores, jobs, students, results, float(timeout), small=small)


def run_small(course: Course, jobs: int | None, dest: Path, progress=print) -> Bench:
    """The small class (SMALL_CLASS): one copy of each of its submissions, graded as the big class is."""
    aid, wrong = SMALL_CLASS
    plan = small_plan(course, aid, wrong)
    return run(course, [aid], len(plan), jobs, dest, progress, plans={aid: plan}, small=True)


def main(argv: list[str] | None = None) -> int:
    """`make bench`: run the benchmark on this course, print its table, save it as reports/bench.json."""
    p = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every assignment")
    p.add_argument("--students", type=int, default=20, help="students per assignment (default: 20)")
    p.add_argument("--jobs", type=int, help="workers of the parallel run (default: the number of CPU cores)")
    p.add_argument("--dest", help="where to build and grade the class (default: bench/)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--small", action="store_true", help=f"only the small class ({SMALL_CLASS[1] + 2} submissions "
                       f"of {SMALL_CLASS[0]}; make bench SMALL=1)")
    which.add_argument("--no-small", action="store_true", help="only the big class, not the small one after it")
    args = p.parse_args(argv)
    for option, value in (("--students", args.students), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            p.error(f"{option} {value}: give at least 1")
    if args.small and args.assignments:
        p.error("--small grades its own class; give no assignment")
    course = Course.find()
    dest = Path(args.dest).resolve() if args.dest else course.root / "bench"
    benches = []
    try:
        if not args.small:
            benches.append(run(course, course.resolve(args.assignments), args.students, args.jobs, dest))
        if not args.no_small:
            benches.append(run_small(course, args.jobs, dest / "small" if not args.small else dest))
    except CourseError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(b.format() for b in benches))
    saved = benches[0].as_json()
    if len(benches) > 1:
        saved["small_class"] = benches[1].as_json()
    out = course.root / "reports" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
    print(f"\nSaved: {out.relative_to(course.root)} (the graded class and the logs: {dest})")
    return 0 if all(b.met for b in benches) else 1


if __name__ == "__main__":
    sys.exit(main())
