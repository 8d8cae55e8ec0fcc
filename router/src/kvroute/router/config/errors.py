"""`ConfigError` and the path notation its messages use: `schedulingProfiles[0].plugins[2].pluginRef`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import ValidationError

Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """A configuration document was rejected. `errors` holds one message per problem, each starting with the
    path of the offending field; `str()` joins them one per line."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: tuple[str, ...] = (errors,) if isinstance(errors, str) else tuple(errors)
        super().__init__("\n".join(self.errors))


def format_path(loc: Iterable[str | int]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def at(loc: Iterable[str | int], message: str) -> str:
    """`message` prefixed with the path of `loc` (no prefix for the document root)."""
    path = format_path(loc)
    return f"{path}: {message}" if path else message


def validation_messages(error: ValidationError, prefix: Loc = ()) -> list[str]:
    """One message per pydantic error, its location (by alias) under `prefix`."""
    return [at((*prefix, *e["loc"]), e["msg"]) for e in error.errors(include_url=False)]
