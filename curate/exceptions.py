"""Errors raised by curation: bad configuration or records that cannot be read."""


class CurationError(Exception):
    """Base class for curation errors."""


class ConfigError(CurationError, ValueError):
    """A curation setting is out of range or inconsistent (the message names it and its value)."""


class RecordError(CurationError, ValueError):
    """A trace row cannot be turned into a record (the message names the trace and the field)."""


class DatasetError(CurationError, ValueError):
    """A dataset asked for is not in the datasets directory, or no dataset of a kind has been built
    yet (the message names the id or kind)."""
