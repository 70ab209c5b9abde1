"""One exception tree for lbproxy.

Errors split the way h11 splits them: ``DownstreamError`` is "the client did it" and carries the
4xx status to answer with; ``UpstreamError`` is "the backend (or our way to it) did it" and carries
the 5xx status and a short ``kind`` used in metrics and logs. The HTTP layer maps an exception to a
response through these attributes, never through a chain of ``isinstance`` checks.
"""

from __future__ import annotations


class LBProxyError(Exception):
    """Base of every error lbproxy raises on purpose."""


class ConfigError(LBProxyError):
    """A configuration could not be loaded; ``problems`` lists every ``FILE:LINE: key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DownstreamError(LBProxyError):
    """The client sent something we refuse; answer ``status`` and close the connection."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UpstreamError(LBProxyError):
    """A backend could not be reached or answered badly.

    ``kind`` is one of the bounded metric label values: ``connect_refused``, ``connect_timeout``,
    ``reset``, ``bad_response``, ``response_timeout``, ``no_backend``.
    """

    status = 502
    kind = "reset"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ConnectRefused(UpstreamError):
    status = 502
    kind = "connect_refused"


class ConnectTimeout(UpstreamError):
    status = 504
    kind = "connect_timeout"


class UpstreamReset(UpstreamError):
    status = 502
    kind = "reset"


class BadResponse(UpstreamError):
    status = 502
    kind = "bad_response"


class ResponseTimeout(UpstreamError):
    status = 504
    kind = "response_timeout"


class NoBackend(UpstreamError):
    status = 503
    kind = "no_backend"
