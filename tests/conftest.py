from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # toycourse

from coursegrader.course import Course  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def course() -> Course:
    return Course.load(REPO)


@pytest.fixture(scope="session")
def toy_course(tmp_path_factory) -> Course:
    """A released one-assignment course (`toy`): for tests of the tooling that must not wait for real notebooks."""
    from toycourse import make_toy_course

    return Course.load(make_toy_course(tmp_path_factory.mktemp("toy")))
