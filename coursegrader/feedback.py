"""Feedback that tells students which test failed and why, without showing them the hidden tests.

nbgrader's feedback HTML renders the autograded notebook as it is: test cells carry their hidden tests,
and IPython tracebacks quote the failing line (nbgrader issues 917 and 1363). This preprocessor, run by
`generate_feedback` (see nbgrader_config.py), keeps a test cell's visible tests, replaces its hidden part
by one comment, and shortens every error in a test cell to its type and message.

The autograded notebook also carries the mark scheme of each written answer (autograde restores the locked
cell that holds it, so that the formgrader shows it to the TA); HideMarkSchemes, also in generate_feedback's
list, removes it from the feedback. `feedback_leaks` checks both.
"""

from __future__ import annotations

import html
import re

from nbconvert.exporters.exporter import ResourcesDict
from nbformat import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor

from .notebooks import HIDDEN_TESTS, MARK_SCHEME, is_test

HIDDEN_NOTE = "# (hidden tests ran here; their code is not shown in feedback)"


def visible_part(source: str) -> str:
    """The test cell's source up to its hidden tests, with a note where they were."""
    lines = source.splitlines()
    cut = next((i for i, line in enumerate(lines) if HIDDEN_TESTS[0] in line), None)
    if cut is None:
        return source
    return "\n".join(lines[:cut] + [HIDDEN_NOTE])


def short_error(output: NotebookNode) -> NotebookNode:
    """An error output reduced to `Type: message`: the message is for the student, the code context is not."""
    output.traceback = [f"{output.ename}: {output.evalue}" if output.evalue else output.ename]
    return output


class HideHiddenTests(NbGraderPreprocessor):
    """Strip hidden tests and tracebacks from test cells before feedback is rendered."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, index: int) -> tuple[NotebookNode, ResourcesDict]:
        if is_test(cell):
            cell.source = visible_part(cell.source)
            cell.outputs = [short_error(o) if o.output_type == "error" else o for o in cell.get("outputs", [])]
        return cell, resources


def region_lines(source_nb: NotebookNode, markers: tuple[str, str], min_chars: int = 12) -> set[str]:
    """Stripped lines that occur only inside the regions between `markers` (not elsewhere in the notebook)."""
    hidden, elsewhere = set(), set()
    for cell in source_nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if markers[0] in line:
                inside = True
            elif markers[1] in line:
                inside = False
            else:
                (hidden if inside else elsewhere).add(line.strip())
    return {line for line in hidden - elsewhere if len(line) >= min_chars}


def without_mark_schemes(source: str) -> str:
    """The source without its mark-scheme regions, markers included; a region that is never closed runs to the end."""
    kept, inside = [], False
    for line in source.splitlines():
        if MARK_SCHEME[0] in line:
            inside = True
        elif MARK_SCHEME[1] in line and inside:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept)


class HideMarkSchemes(NbGraderPreprocessor):
    """Remove the written answers' mark schemes, which autograde restored for the formgrader, before feedback is
    rendered. nbgrader's ClearMarkScheme would do it too, but it raises on a marker without its partner, which a
    student can type into an answer: that student would get no feedback at all."""

    def preprocess_cell(self, cell: NotebookNode, resources: ResourcesDict, index: int) -> tuple[NotebookNode, ResourcesDict]:
        if MARK_SCHEME[0] in cell.source:
            cell.source = without_mark_schemes(cell.source)
        return cell, resources


def hidden_test_lines(source_nb: NotebookNode, min_chars: int = 12) -> set[str]:
    """Stripped lines that occur only inside hidden tests (not in visible tests, solutions or given code)."""
    return region_lines(source_nb, HIDDEN_TESTS, min_chars)


def plain(markdown: str) -> str:
    """Markdown as its rendering reads once tags are stripped: no emphasis or code marks, a bullet's dash gone,
    whitespace collapsed."""
    return " ".join(re.sub(r"(?m)^\s*[-*]\s+|[*`]", "", markdown).split())


def mark_scheme_leaks(source_nb: NotebookNode, page_text: str, own_text: str, min_chars: int = 20) -> list[str]:
    """What a page (its text, tags stripped) shows of the mark schemes: their markers, or one of their lines.

    A mark scheme is markdown, rendered: its source lines are looked for in the page's collapsed text."""
    shown, own = " ".join(page_text.split()), " ".join(own_text.split())
    lines = {plain(line) for line in region_lines(source_nb, MARK_SCHEME, min_chars)}
    found = [marker for marker in MARK_SCHEME if marker in shown and marker not in own]
    return found + sorted(line for line in lines if len(line) >= min_chars and line in shown and line not in own)


def feedback_leaks(source_nb: NotebookNode, feedback_html: str, submitted_nb: NotebookNode) -> list[str]:
    """Hidden-test lines and mark-scheme text that a feedback page shows and the student did not write themselves.

    The page is read as text (tags stripped, entities unescaped), so syntax highlighting cannot hide a line.
    """
    text = html.unescape(re.sub(r"<[^>]+>", "", feedback_html))
    shown = {line.strip() for line in text.splitlines()}
    own = {line.strip() for cell in submitted_nb.cells for line in cell.source.splitlines()}
    own_text = "\n".join(plain(cell.source) for cell in submitted_nb.cells)
    return sorted(hidden_test_lines(source_nb) & shown - own) + mark_scheme_leaks(source_nb, text, own_text)
