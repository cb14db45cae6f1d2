"""Domain exceptions.

Library code raises these; the CLI and the app turn them into one-line messages.
Every message says what was wrong and how to fix it.
"""


class RagError(Exception):
    """A user-facing error: bad input, a missing file, a misconfigured backend."""


class CorpusError(RagError):
    """The corpus could not be read or has malformed rows."""


class IndexStoreError(RagError):
    """The on-disk index is missing, stale or corrupt."""


class LMError(RagError):
    """The language model backend failed or is misconfigured."""


class LMTimeout(LMError):
    """The language model did not answer in time (the embedded one: made no progress); worth one retry."""


class ProgramError(RagError):
    """A saved program file is missing, corrupt or does not match."""


class EvalError(RagError):
    """A labelled set or report that cannot be used."""


class SettingsError(RagError):
    """A setting has an unknown name or an invalid value."""


class QuestionTooLong(RagError):
    """A question over the length limit; the chat words it for its own users."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"the question is {length:,} characters; the limit is {limit:,}, shorten it")
        self.length = length
        self.limit = limit
