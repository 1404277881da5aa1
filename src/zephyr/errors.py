"""Exceptions that carry a message meant for the user (printed without a traceback by the CLI)."""


class ZephyrError(Exception):
    """An error whose message says what is wrong and how to fix it."""


class ConfigError(ZephyrError):
    """A recipe or command-line setting is invalid; ``key`` names the setting when one is to blame."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class SplitNotFound(ConfigError):
    """A data source has no split of the name asked for (a test split is optional in some recipe forms)."""


class ModelError(ZephyrError):
    """A model spec cannot be resolved or loaded."""


class DataError(ZephyrError):
    """A malformed input row. The message names the source, the line (text files) or row, and the field.

    >>> str(DataError("must be a non-empty string", source="a.jsonl", line=3, field="messages[1].content"))
    'a.jsonl, line 3, field `messages[1].content`: must be a non-empty string'
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
    ):
        self.reason, self.source, self.line, self.row, self.field = reason, source, line, row, field
        where = [str(source)] if source is not None else []
        if line is not None:
            where.append(f"line {line}")
        elif row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field `{field}`")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def location(self) -> dict:
        """The where-keywords this error was made with, to make a related error about the same place."""
        keys = ("source", "line", "row", "field")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
