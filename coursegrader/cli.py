"""The `coursegrader` command: one subcommand per job a lecturer or TA does."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .course import Course
from . import logs, workers
from .errors import CourseError


def cmd_release(course: Course, args: argparse.Namespace) -> int:
    from .release import publish

    leaks = publish(course, course.resolve(args.assignments))
    for aid, found in leaks.items():
        print(f"{course.release_dir(aid).relative_to(course.root)}: " + ("clean" if not found else f"{len(found)} LEAKS"))
        for leak in found:
            print(f"  {leak}")
    return 1 if any(leaks.values()) else 0


def cmd_check(course: Course, args: argparse.Namespace) -> int:
    from . import check

    reports = check.run(course, course.resolve(args.assignments), exact=args.exact, jobs=args.jobs,
                        sandbox=not args.no_sandbox)
    print(check.format_report(reports))
    return 0 if all(r.ok for r in reports) else 1


def cmd_demo(course: Course, args: argparse.Namespace) -> int:
    from . import demo, sampleclass

    dest = Path(args.dest).resolve() if args.dest else course.demo_root
    results, csv = demo.run(course, course.resolve(args.assignments), dest, sandbox=not args.no_sandbox)
    print(demo.format_report(results, csv, course.at(dest)))
    unexpected = [f"{sub.assignment}/{sub.student}" for sub, res in results if not sampleclass.as_expected(sub, res)]
    if unexpected:
        print(f"NOT as expected: {', '.join(unexpected)} (run `coursegrader check` for the details)")
    return 1 if unexpected else 0


def at_least_one(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CourseError(f"{option} {value}: give at least 1")


def database(args: argparse.Namespace) -> str | None:
    """The --db URL, checked (None: the course's own gradebook)."""
    from .gradebook import normalise_url

    return normalise_url(args.db) if args.db else None


def cmd_autograde(course: Course, args: argparse.Namespace) -> int:
    if args.jobs != 1:
        workers.start_early()  # before the imports below, which it repeats on the other core
    from . import autograde
    from .gradebook import Shard

    (aid,) = course.resolve([args.assignment])
    at_least_one("--jobs", args.jobs)
    shard = Shard.parse(args.shard) if args.shard else None
    db_url = database(args)
    outcome = autograde.run(course, aid, args.student or None, sandbox=not args.no_sandbox, jobs=args.jobs,
                            db_url=db_url, shard=shard)
    if not outcome.results:
        print(f"shard {shard} has none of the students who submitted {aid}: nothing to grade")
        return 0
    print(autograde.format_report(outcome))
    # machines sharing the course folder must not overwrite each other's reports: one folder per shard
    folder = course.reports_dir(aid, (shard.index, shard.count) if shard else None)
    grades, findings = autograde.save_reports(outcome.results, folder)
    autograde.save_run(outcome, folder)
    print(f"\nSaved: {grades.relative_to(course.root)}, {findings.relative_to(course.root)}")
    return 0 if all(r.ok for r in outcome.results) else 1


def cmd_report(course: Course, args: argparse.Namespace) -> int:
    from . import report

    (aid,) = course.resolve([args.assignment])
    built = report.build(course, aid, database(args))
    paths = report.save(built, course.reports_dir(aid))
    print(f"{aid}: {len(built.students)} students, {len(built.graded)} graded, {len(built.to_look_at)} to look at")
    if built.written:
        print(f"written answers waiting for a TA: {sum(len(s.waiting) for s in built.waiting)}, from "
              f"{len(built.waiting)} student(s) (cells {', '.join(w.cell for w in built.written)}; not in the scores)")
    print("Saved: " + ", ".join(str(p.relative_to(course.root)) for p in paths))
    return 0


def cmd_lab(course: Course, args: argparse.Namespace) -> int:
    from . import lab

    return lab.run(course, args.lecturer, ["--no-browser"] if args.no_browser else [])


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)  # on every subcommand
    talk = common.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="count", default=0,
                      help="say more: what the grader does (-v), and the kernels' own messages and nbgrader's (-vv)")
    talk.add_argument("-q", "--quiet", action="store_true", help="errors and results only: no progress bars, no warnings")
    p = argparse.ArgumentParser(prog="coursegrader", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[common], **k)  # noqa: E731

    s = sub.add_parser("release", help="regenerate release/ from source/ and check it for leaks")
    s.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every assignment")
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("check", help="prove that every assignment grades as it should")
    s.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every assignment")
    s.add_argument("--exact", action="store_true", help="grade every wrong answer alone (slower, no grouping)")
    s.add_argument("--jobs", type=int, help="assignments checked at once (default: the number of CPU cores)")
    s.add_argument("--no-sandbox", action="store_true", help="run the notebooks without bubblewrap")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("demo", help="autograde, give feedback to and export a sample class, in demo/")
    s.add_argument("assignments", nargs="*", metavar="ASSIGNMENT", help="default: every assignment")
    s.add_argument("--dest", help="where to build the sample course (default: demo/)")
    s.add_argument("--no-sandbox", action="store_true", help="run the notebooks without bubblewrap")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("autograde", help="autograde the submissions in submitted/ for one assignment")
    s.add_argument("assignment", metavar="ASSIGNMENT")
    s.add_argument("--student", action="append", help="grade only this student (repeatable)")
    s.add_argument("--no-sandbox", action="store_true", help="run student code without bubblewrap (not recommended)")
    s.add_argument("--jobs", type=int, help="students graded at once (default: the number of CPU cores)")
    s.add_argument("--db", metavar="URL", help="gradebook database (default: c.CourseDirectory.db_url, else "
                   "gradebook.db), e.g. postgresql://grader@dbhost/course for several machines")
    s.add_argument("--shard", metavar="I/N", help="grade only share I of N of the students (one per machine)")
    s.set_defaults(func=cmd_autograde)

    s = sub.add_parser("report", help="after autograde: an HTML page and CSVs of the class's grades")
    s.add_argument("assignment", metavar="ASSIGNMENT")
    s.add_argument("--db", metavar="URL", help="gradebook database (default: as autograde)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("lab", help="JupyterLab on release/ as a student sees it, or on source/ for a lecturer")
    s.add_argument("--lecturer", action="store_true", help="source/ with nbgrader's create-assignment toolbar and formgrader")
    s.add_argument("--no-browser", action="store_true", help="print the address instead of opening a browser")
    s.set_defaults(func=cmd_lab)

    return p


def configure_logging(verbose: int, quiet: bool) -> None:
    """-v, -vv, -q (logs.py); -q also turns progress bars off."""
    logs.configure(logs.level_for(verbose, quiet))
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        return args.func(Course.find(), args)
    except CourseError as exc:
        print(f"coursegrader: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coursegrader: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
