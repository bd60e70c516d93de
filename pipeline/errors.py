"""User-facing errors.

Every problem a user can cause (bad input, unknown names, mismatching stores)
raises an ``EmbwalkError`` whose message is one line naming the problem and the
input. The job entry points print that line and exit non-zero; anything else
that escapes is a bug and keeps its traceback.
"""


class EmbwalkError(Exception):
    """A problem with the user's input or environment, reported in one line."""


class CorpusError(EmbwalkError):
    """The corpus cannot be read: missing, empty, binary or badly encoded input."""


class ModelError(EmbwalkError):
    """The model cannot be loaded or is not supported."""


class SiteError(EmbwalkError):
    """A capture site name or layer index is not valid for the model."""


class StoreError(EmbwalkError):
    """The store cannot be created, resumed or read."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): what a
    one-line error quotes from a library's multi-line one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
