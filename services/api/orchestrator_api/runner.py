"""The runner the API serves with: problem JSON even for requests no middleware sees.

aiohttp answers a request its HTTP parser rejects (a malformed request line, an invalid header,
bad chunked framing, a header over the size limit) from its connection handler, before the app
and its ``error_middleware`` run, with a text/plain body that quotes the request back. The same
handler answers errors that escape the middlewares. ``ApiRunner`` serves connections with a
handler that answers those with problem JSON too; requests that parse take the usual path,
untouched.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .problems import TYPE_BLANK, TYPE_INTERNAL, Problem, malformed_request, problem_response

__all__ = ["ApiRunner"]


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer every error with an RFC 9457 problem."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        # BaseRunner's hook for the connection factory its sites listen with: the app's own,
        # with the same arguments, making problem-answering connection handlers.
        server = await super()._make_server()
        return _ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            **server._kwargs,
        )


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
