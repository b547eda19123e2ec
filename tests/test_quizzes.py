"""Multiple-choice questions teach when they are wrong: every statement has its sentence, shown in feedback.

A quiz's test cell offers letters (`answer_x <= {'a', 'b', 'c'}`, visible) and, in its hidden block, holds
`_verdicts = {letter: (true?, "(a) is true: ...")}`: the assert message lists the sentence of every statement
the student judged wrongly, and the final assert compares the selection with the true letters.

The static tests hold each quiz to that form. The pipeline test hands in, per assignment, one student who judges
every statement wrongly (and answers nothing else; a quiz whose statements are all true gets a student per letter
left out), grades them under real autograde,
generates their feedback, and reads it: each misjudged statement's sentence must be on the page.
"""

from __future__ import annotations

import ast
import html
import re

import pytest

from conftest import REPO, TRUSTED
from coursegrader.course import Course
from coursegrader.notebooks import grade_id, read_notebook

LIVE = Course.load(REPO).live()


def literal(node: ast.AST):
    """The node's value if it is written as a literal, else None (the static test then says what is missing)."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def quizzes(aid: str) -> dict[str, dict]:
    """The multiple-choice questions: answer variable -> {"offered": letters, "verdicts": {letter: (true, sentence)},
    "correct": letters}."""
    found = {}
    for cell in read_notebook(REPO / "source" / aid / f"{aid}.ipynb").cells:
        gid = grade_id(cell) or ""
        if not gid.startswith("test_answer_"):
            continue
        name = gid.removeprefix("test_")
        visible, _, hidden = cell.source.partition("### BEGIN HIDDEN TESTS")
        quiz = {"offered": None, "verdicts": None, "correct": None}
        for node in ast.walk(ast.parse(visible + "\n" + hidden.split("### END HIDDEN TESTS")[0])):
            if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.LtE) and ast.unparse(node.left) == name:
                quiz["offered"] = literal(node.comparators[0])
            elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_verdicts":
                quiz["verdicts"] = literal(node.value)
            elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.Eq) \
                    and ast.unparse(node.left) == f"set({name})":
                quiz["correct"] = literal(node.comparators[0])
        if quiz["offered"] is not None:  # a multiple-choice question (an ordering question has no letters offered)
            found[name] = quiz
    return found


WITH_QUIZZES = [aid for aid in LIVE if quizzes(aid)]


@pytest.mark.parametrize("aid", WITH_QUIZZES)
def test_every_statement_has_its_sentence(aid):
    for name, quiz in quizzes(aid).items():
        assert quiz["verdicts"], f"{aid}/{name}: the hidden test has no _verdicts with a sentence per statement"
        assert set(quiz["verdicts"]) == set(quiz["offered"]), f"{aid}/{name}: sentences for {sorted(quiz['verdicts'])}, " \
                                                              f"letters offered {sorted(quiz['offered'])}"
        true = {letter for letter, (is_true, _) in quiz["verdicts"].items() if is_true}
        assert true == quiz["correct"], f"{aid}/{name}: the sentences call {sorted(true)} true, the answer key " \
                                        f"{sorted(quiz['correct'] or [])}"
        for letter, (is_true, sentence) in quiz["verdicts"].items():
            start = f"({letter}) is {'true' if is_true else 'false'}: "
            assert sentence.startswith(start) and len(sentence) > len(start) + 20, \
                f"{aid}/{name}: the sentence for ({letter}) should start '{start}' and say why: {sentence!r}"


def misjudging(quiz: dict, position: int) -> set[str] | None:
    """A selection that judges the statement at `position` wrongly (None if there is no such statement). A
    statement that is the only true one is left out by choosing all the others (a selection is never empty)."""
    letters = sorted(quiz["offered"])
    if position >= len(letters):
        return None
    letter = letters[position]
    chosen = set(quiz["correct"]) ^ {letter}
    return chosen or set(letters) - {letter}


@pytest.mark.pipeline
@pytest.mark.parametrize("aid", WITH_QUIZZES)
def test_feedback_explains_every_statement_judged_wrongly(aid, tmp_path):
    from coursegrader import autograde
    from coursegrader.nbgrader_api import Grader
    from coursegrader.notebooks import with_answers, write_notebook

    course = Course.load(REPO)
    root = course.make_scratch_course(tmp_path / "course", [aid]).root
    (root / "course.toml").write_text((REPO / "course.toml").read_text())
    Grader(course, root, **TRUSTED).generate(aid)
    quiz = quizzes(aid)
    release = read_notebook(root / "release" / aid / f"{aid}.ipynb")
    # One student judges every statement of every quiz wrongly (the complement of the true letters); a quiz whose
    # statements are all true (an empty complement) gets students who each leave out one true letter instead.
    flipped = {name: set(q["offered"]) - set(q["correct"]) for name, q in quiz.items()}
    plans = {"flips-all": {name: c for name, c in flipped.items() if c}}
    all_true = [name for name, c in flipped.items() if not c]
    for position in range(max((len(quiz[name]["offered"]) for name in all_true), default=0)):
        plans[f"flips-{'abcdefgh'[position]}"] = {name: misjudging(quiz[name], position) for name in all_true}
    expected: dict[str, list[str]] = {}
    for student, chosen in plans.items():
        chosen = {name: c for name, c in chosen.items() if c}
        own = {name: f"{name} = {sorted(c)!r}".replace("[", "{").replace("]", "}") for name, c in chosen.items()}
        # only the quizzes answered: the other exercises' stubs stop at once, so the notebook grades in seconds
        write_notebook(with_answers(release, own), root / "submitted" / student / aid / f"{aid}.ipynb")
        expected[student] = [why for name, c in chosen.items() for letter, (true, why) in quiz[name]["verdicts"].items()
                             if (letter in c) != true]
    outcome = autograde.run(Course.load(root), aid, **TRUSTED)
    assert all(r.ok for r in outcome.results), [r.error for r in outcome.results if not r.ok]
    Grader(course, root, **TRUSTED).generate_feedback(aid)
    for student, sentences in expected.items():
        page = (root / "feedback" / student / aid / f"{aid}.html").read_text(encoding="utf-8")
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
        missing = [s for s in sentences if " ".join(s.split()) not in text]
        assert not missing, f"{aid}: {student}'s feedback does not explain {len(missing)} misjudged statement(s), " \
                            f"e.g. {missing[0]!r}"
