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


class ProgramError(RagError):
    """A saved program file is missing, corrupt or does not match."""


class SettingsError(RagError):
    """A setting has an unknown name or an invalid value."""
