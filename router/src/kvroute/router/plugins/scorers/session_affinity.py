"""`session-affinity-scorer`: keep a client's session on the endpoint that served it last.

The token is the standard base64 encoding of the endpoint id (`ip:port`), carried in the `x-session-token`
header. Scoring a request that carries a token:

    score_e = 1.0 if e.id == base64_decode(token) else 0.0

A request without a token, or with one that does not decode to UTF-8 text, scores 0.0 everywhere (the scorer
then has no effect). If the encoded endpoint is no longer a candidate, no endpoint scores 1.0 and the other
scorers decide.

As a response hook it hands the client the token for the endpoint that answered: at `on_response_headers` it
adds `x-session-token: base64(endpoint.id)` to `ResponseInfo.client_headers`, which the front doors add to the
client's response. The client sends the header back on its next request. No parameters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from kvroute.router.framework import CycleState, Endpoint, LLMRequest, ResponseHook, ResponseInfo, Scorer

SESSION_TOKEN_HEADER = "x-session-token"


def encode_session_token(endpoint_id: str) -> str:
    return base64.b64encode(endpoint_id.encode()).decode("ascii")


def decode_session_token(token: str) -> str | None:
    """The endpoint id a token names, or None when the token is not valid base64 of UTF-8 text."""
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


class SessionAffinityScorer(Scorer, ResponseHook):
    type_name = "session-affinity-scorer"

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> dict[str, float]:
        token = _header(request, SESSION_TOKEN_HEADER)
        target = decode_session_token(token) if token else None
        return {e.id: 1.0 if e.id == target else 0.0 for e in endpoints}

    def on_response_headers(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint, response: ResponseInfo
    ) -> None:
        response.client_headers[SESSION_TOKEN_HEADER] = encode_session_token(endpoint.id)

    def on_response_complete(
        self, state: CycleState, request: LLMRequest, endpoint: Endpoint | None, response: ResponseInfo
    ) -> None:
        """Nothing is held per request."""


def _header(request: LLMRequest, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None:
        return value
    # Header names are case-insensitive; front doors may or may not have lower-cased them.
    return next((v for k, v in request.headers.items() if k.lower() == name), None)
