"""Exceptions raised by fcwarm. Every library error carries ``code`` (e.g. ``"not_found"``)."""


class Error(RuntimeError):
    """Base class of every fcwarm error."""

    code = "internal"


class NotFoundError(Error, LookupError):
    """The named object (image, snapshot, VM) does not exist."""

    code = "not_found"


class InvalidArgumentError(Error, ValueError):
    """Input was malformed; the message names the field."""

    code = "invalid_argument"


class ConflictError(Error):
    """The object exists already, a limit is reached, or its state forbids the call."""

    code = "failed_precondition"


class UnavailableError(Error):
    """A VMM, guest or disk failed or did not answer in time."""

    code = "unavailable"


__all__ = ["Error", "NotFoundError", "InvalidArgumentError", "ConflictError", "UnavailableError"]
