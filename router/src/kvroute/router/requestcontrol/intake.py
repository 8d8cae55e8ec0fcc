"""`Intake`: a request's body as a front door receives it, under the body limit, until the Director starts it.

`Director.open(api, length)` makes one (refusing at once a body whose announced `Content-Length` is over the
limit); the door `add`s the body's chunks as they arrive (a body found over the limit is refused as soon as it
is), then hands `body` to `Director.start`. A door whose server enforces the limit itself while reading (the
proxy's aiohttp) answers with `refuse()` when it trips. Every refusal is a `RequestError(413)` already recorded
in the ledger (status 413, no duration): the door only answers it.
"""

from __future__ import annotations

from kvroute.router.framework import ApiKind
from kvroute.router.requestcontrol.body import RequestError, too_large
from kvroute.router.requestcontrol.ledger import Ledger


class Intake:
    __slots__ = ("_ledger", "_parts", "_size", "api", "limit")

    def __init__(self, api: ApiKind, limit: int, ledger: Ledger, length: int | None = None) -> None:
        """Raises the 413 `RequestError` when `length` (the announced size) is over `limit`."""
        self.api = api
        self.limit = limit
        self._ledger = ledger
        self._parts: list[bytes] = []
        self._size = 0
        if length is not None and length > limit:
            raise self.refuse()

    def add(self, data: bytes) -> None:
        """One more chunk of the body; raises the 413 `RequestError` when the body is now over the limit."""
        if not data:
            return
        self._size += len(data)
        if self._size > self.limit:
            self._parts = []
            raise self.refuse()
        self._parts.append(data)

    @property
    def body(self) -> bytes:
        """The body received so far."""
        parts = self._parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def refuse(self) -> RequestError:
        """Records the request as refused for its size; returns the error for the door to answer."""
        self._ledger.record(self.api, 413, 0.0)
        return too_large(self.limit)
