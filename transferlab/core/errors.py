"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class TransferlabError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""


class DataError(TransferlabError):
    """A dataset cannot be used as given (missing path, empty class, corrupt image in strict mode)."""


class BackboneError(TransferlabError):
    """A backbone name is unknown or its weights cannot be obtained."""
