"""The runner the API serves with: problem JSON even for requests no middleware sees.

aiohttp answers a request its HTTP parser rejects (a malformed request line, an invalid header,
bad chunked framing, a header over the size limit) from its connection handler, before the app
and its ``error_middleware`` run, with a text/plain body that quotes the request back. The same
handler answers errors that escape the middlewares. ``ApiRunner`` serves connections with a
handler that answers those with problem JSON too; requests that parse take the usual path,
untouched.

That replaces aiohttp's connection handler through internals (``BaseRunner._make_server``,
``Server._kwargs``/``_loop``, the ``handle_error`` signature). ``aiohttp_internals_problem``
checks them at import and ``_make_server`` checks the server it gets; if either is not as
expected the runner serves with aiohttp's own handler (logged once): those rare answers are
then aiohttp's text/plain ones, everything else is unchanged.

Logging: aiohttp logs a rejected request as an ERROR traceback whose message quotes the
offending bytes (an ``Authorization`` header included). The handler here logs one DEBUG line
naming the kind of error instead; and, whichever handler serves, ``redact_parser_errors``
keeps a filter on aiohttp's loggers that rewrites any parser-error record the same way.

Connection limits (``HttpLimits``): ``keepalive`` is aiohttp's own ``keepalive_timeout``.
The header read timeout and the connection cap need the handler here: a connection must
complete its request headers within ``header_timeout`` of opening, or of the first byte of a
later keep-alive request; past ``max_connections`` open connections a new one is answered
``503`` (``Retry-After: 1``) at once and closed, before anything is read. On the fallback
path only the keep-alive timeout applies (aiohttp closes a connection that is still waiting
for its request after it too, so a slow sender is bounded by it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Final

import attrs
import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError

from .problems import (
    PROBLEM_CONTENT_TYPE,
    TYPE_BLANK,
    TYPE_INTERNAL,
    TYPE_UNAVAILABLE,
    Problem,
    malformed_request,
    problem_response,
)
from .strict import unsupported_encoding

__all__ = ["ApiRunner", "HttpLimits", "aiohttp_internals_problem", "redact_parser_errors"]

_log = logging.getLogger(__name__)

#: The access log line: no request header value (aiohttp's default quotes the Referer and
#: User-Agent headers).
ACCESS_LOG_FORMAT: Final = '%a "%r" %s %b %Tf'

#: The handler's fields the header timeout reads (all set in aiohttp's ``__init__``).
_HANDLER_FIELDS: Final = (
    "_request_count",
    "_messages",
    "_request_in_progress",
    "_payload_parser",
    "transport",
)


@attrs.frozen
class HttpLimits:
    """How long a connection may take and how many may be open; see the module docstring."""

    header_timeout: float = 10.0
    keepalive: float = 75.0
    max_connections: int = 10_000


def _parser_error(exc: BaseException | None) -> HttpProcessingError | None:
    seen = 0
    while exc is not None and seen < 4:  # the error itself, or what it was raised from
        if isinstance(exc, HttpProcessingError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class _ParserErrorFilter(logging.Filter):
    """Rewrites a record that carries an aiohttp parser error as one DEBUG line naming its
    kind: the error's message and traceback quote the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        error = _parser_error(exc)
        if error is None:
            return True
        record.msg = "api: rejected a malformed request (%s)"
        record.args = (type(error).__name__,)
        record.exc_info = record.exc_text = record.stack_info = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


_FILTER: Final = _ParserErrorFilter()
#: Where aiohttp logs request handling: the connection handler, the access log, the app.
_AIOHTTP_LOGGERS: Final = ("aiohttp.server", "aiohttp.access", "aiohttp.web")


def redact_parser_errors() -> None:
    """Keep aiohttp's loggers from logging a rejected request's bytes (idempotent)."""
    for name in _AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def aiohttp_internals_problem() -> str | None:
    """Why ``ApiRunner`` cannot install its connection handler with this aiohttp, or None."""
    try:
        if not inspect.iscoroutinefunction(getattr(web.AppRunner, "_make_server", None)):
            return "AppRunner has no async _make_server"
        server = inspect.signature(web.Server.__init__).parameters
        if not {"request_factory", "handler_cancellation"} <= set(server):
            return "web.Server takes other arguments"
        if not any(p.kind is p.VAR_KEYWORD for p in server.values()):
            return "web.Server takes no handler keyword arguments"
        if "loop" not in inspect.signature(web.RequestHandler.__init__).parameters:
            return "web.RequestHandler takes no loop"
        handle_error = tuple(inspect.signature(web.RequestHandler.handle_error).parameters)
        if handle_error != ("self", "request", "status", "exc", "message"):
            return f"RequestHandler.handle_error takes {handle_error}"
        mro = web.RequestHandler.__mro__
        slots = {name for cls in mro for name in getattr(cls, "__slots__", ())}
        missing = [name for name in _HANDLER_FIELDS if name not in slots]
        if missing:
            return f"RequestHandler keeps no {', '.join(missing)}"
        for method in ("connection_made", "connection_lost", "data_received"):
            if not callable(getattr(web.RequestHandler, method, None)):
                return f"RequestHandler has no {method}"
    except (TypeError, ValueError) as exc:  # a signature that cannot be read
        return f"probe failed: {exc!r}"
    return None


_PROBLEM = aiohttp_internals_problem()
_logged = False


def _fall_back(reason: str) -> None:
    global _logged
    if not _logged:
        _logged = True
        _log.info(
            "api: aiohttp answers malformed requests itself (text/plain, not problem JSON): "
            "its internals changed (%s)",
            reason,
        )


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer every error with an RFC 9457 problem,
    log no request bytes, and keep to ``limits``."""

    __slots__ = ("_limits",)

    def __init__(
        self, app: web.Application, *, limits: HttpLimits | None = None, **kwargs: Any
    ) -> None:
        self._limits = limits = limits or HttpLimits()
        kwargs.setdefault("keepalive_timeout", limits.keepalive)
        kwargs.setdefault("access_log_format", ACCESS_LOG_FORMAT)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        # BaseRunner's hook for the connection factory its sites listen with: the app's own,
        # with the same arguments, making problem-answering connection handlers.
        redact_parser_errors()  # whichever handler serves
        server = await super()._make_server()
        problem = _PROBLEM or _server_problem(server)
        if problem is not None:
            _fall_back(problem)
            return server
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            limits=self._limits,
            **server._kwargs,
        )


def _server_problem(server: web.Server) -> str | None:
    if type(server) is not web.Server:
        return f"the app's server is a {type(server).__qualname__}"
    if not isinstance(getattr(server, "_kwargs", None), dict) or not hasattr(server, "_loop"):
        return "web.Server keeps no _kwargs or _loop"
    if not all(
        hasattr(server, name)
        for name in ("request_handler", "request_factory", "handler_cancellation")
    ):
        return "web.Server keeps other fields"
    return None


def _busy_answer() -> bytes:
    problem = Problem(
        503, "The server has too many open connections. Retry later.", type=TYPE_UNAVAILABLE
    )
    body = orjson.dumps(problem.body())
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


#: What a connection past ``max_connections`` gets before it is closed.
_BUSY: Final = _busy_answer()


class _ProblemServer(web.Server):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.open_connections = 0  # counted by the handlers, refused ones excluded

    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, but its own error answers are problems, it logs no
    request bytes, and it keeps to the server's ``HttpLimits``."""

    __slots__ = ("_counted", "_header_timer", "_limits", "_server")

    def __init__(self, manager: _ProblemServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._limits = manager.limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        if server.open_connections >= self._limits.max_connections:
            # Refused before aiohttp sees it: no task, no parser, no keep-alive timer.
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_BUSY)
            transport.close()
            self._manager = None  # connection_lost then has nothing to undo
            _log.debug("api: refused a connection: %d open", server.open_connections)
            return
        server.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._counted:
            self._counted = False
            self._server.open_connections -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._cancel_header_timer()  # a request's headers are complete
        elif (
            data
            and self._header_timer is None
            and not self._request_in_progress
            and not self._messages
            and self._payload_parser is None
        ):
            # The first byte of the next request on a kept-alive connection: its headers
            # have header_timeout from now.
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._limits.header_timeout > 0 and self.transport is not None:
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout, self._headers_timed_out
            )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self._request_in_progress and not self._messages:
            _log.debug("api: closed a connection that sent no complete request headers in time")
            self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Called for a request the parser rejected (``exc`` is the parser's error, ``status``
        what aiohttp answers), an exception that escaped the middlewares (500) or a handler
        timeout (504)."""
        if isinstance(exc, HttpProcessingError):
            # A client error: one line naming its kind. aiohttp would log a traceback whose
            # message quotes the request's bytes (an API key in a header among them).
            # A coding aiohttp knows but cannot decode here (br, zstd without their packages)
            # fails as the headers are parsed; a body that does not decode fails later,
            # in the handler, as a 400.
            if isinstance(exc, ContentEncodingError):
                problem = unsupported_encoding()
            else:
                problem = malformed_request(exc, status)
            _log.debug(
                "api: rejected a malformed request from %s (%s): %d %s",
                request.remote,
                type(exc).__name__,
                problem.status,
                problem.detail,
            )
            if request.writer.output_size > 0:  # as aiohttp: an answer has already begun
                raise ConnectionError("cannot answer a malformed request after a response")
            # No request was parsed: ``request`` is a placeholder (path "/"), so no instance.
            response = problem_response(problem)
        else:
            # aiohttp logs the error (and raises when a response has already begun); the
            # text/plain answer it builds is dropped.
            super().handle_error(request, status, exc, message)
            internal = TYPE_INTERNAL if status == 500 else TYPE_BLANK
            problem = Problem(status, "The server failed to handle this request.", type=internal)
            response = problem_response(problem, request)
        response.force_close()
        return response
