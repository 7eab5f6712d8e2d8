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
"""

from __future__ import annotations

import inspect
import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .problems import TYPE_BLANK, TYPE_INTERNAL, Problem, malformed_request, problem_response

__all__ = ["ApiRunner", "aiohttp_internals_problem"]

_log = logging.getLogger(__name__)


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
    """``web.AppRunner`` whose connections answer every error with an RFC 9457 problem."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        # BaseRunner's hook for the connection factory its sites listen with: the app's own,
        # with the same arguments, making problem-answering connection handlers.
        server = await super()._make_server()
        problem = _PROBLEM or _server_problem(server)
        if problem is not None:
            _fall_back(problem)
            return server
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
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


class _ProblemServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, but its own error answers are problems."""

    __slots__ = ()

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
        # aiohttp logs the error (and raises when a response has already begun); the
        # text/plain answer it builds is dropped.
        super().handle_error(request, status, exc, message)
        if isinstance(exc, HttpProcessingError):
            # No request was parsed: ``request`` is a placeholder (path "/"), so no instance.
            response = problem_response(malformed_request(exc, status))
        else:
            internal = TYPE_INTERNAL if status == 500 else TYPE_BLANK
            problem = Problem(status, "The server failed to handle this request.", type=internal)
            response = problem_response(problem, request)
        response.force_close()
        return response
