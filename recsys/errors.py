"""The one exception type that means "the user gave bad input" rather than "the program has a bug"."""


class InputError(ValueError):
    """Bad user input: a missing file, a misnamed column, a malformed line, an impossible option.

    The CLI prints it as a single line and exits non-zero without a traceback; anything else is a bug and
    keeps its traceback. The message must name the file, row or field and say what was expected.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), to quote inside an InputError.

    Why: library errors (polars, torch, numpy) often span many lines or carry a backtrace, and an
    :class:`InputError` is printed as one line.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
