"""The one exception the tools raise for bad input: the CLI prints its message as one line."""


class CourseError(Exception):
    """Something the user can fix (unknown assignment, unreadable notebook, ...); no traceback needed."""
