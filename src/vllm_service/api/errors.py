"""Every error leaves the service as an OpenAI error body with the status OpenAI would use.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``

Exception tree::

    APIError                    raised by handlers; carries status, type, param and code
     ├── InvalidRequest         400 invalid_request_error
     ├── ModelNotFound          404 model_not_found
     └── (engine errors)        mapped here: InvalidRequestError → 400,
                                EngineUnavailableError → 503, EngineError → 500
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_service.api.disconnect import ClientDisconnected, on_client_disconnected
from vllm_service.engine.base import (
    EngineError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamProtocolError,
)

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "bad_gateway_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error a handler reports to the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class InvalidRequest(APIError):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(400, message, param=param, code=code)


class ModelNotFound(APIError):
    def __init__(self, model: str):
        super().__init__(
            404,
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_engine_error(exc: EngineError) -> APIError:
    """The API's view of an engine failure."""
    if isinstance(exc, InvalidRequestError):
        return InvalidRequest(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, EngineUnavailableError):
        headers = None
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return APIError(503, exc.message, code="engine_unavailable", headers=headers)
    if isinstance(exc, UpstreamProtocolError):
        return APIError(502, f"Bad gateway: {exc}", code="bad_upstream_response")
    return APIError(500, f"The engine failed: {exc}", code="engine_error")


def _json(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "function-after"})


def _param_of(loc: Sequence[int | str]) -> str | None:
    # Pydantic names union members in the location ('str', 'list[str]', 'constrained-str');
    # a client only wants the path of fields and list indexes.
    parts = [
        str(p)
        for p in loc
        if p != "body"
        and (isinstance(p, int) or (str(p).isidentifier() and str(p) not in _UNION_TAGS))
    ]
    return ".".join(parts) or None


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


#: FastAPI's detail when the body could not be decoded at all (e.g. nested too deeply).
_BODY_PARSE_FAILED = "There was an error parsing the body"


def _invalid_json() -> APIError:
    return InvalidRequest(
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        code="invalid_json",
    )


def _validation_error(exc: RequestValidationError, request: Request) -> APIError:
    if request.method == "POST" and not _is_json(request):
        shown = request.headers.get("content-type") or "none"
        return InvalidRequest(
            f"Unsupported Content-Type '{shown}': send the body as application/json.",
            code="invalid_content_type",
        )
    errors = exc.errors()
    # A value that fits no member of a union (content as a string or a list of parts) gets one
    # error per member; the one saying what is wrong with the value beats "not a string".
    errors = sorted(errors, key=lambda e: str(e.get("type", "")).endswith("_type"))
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return _invalid_json()
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
        return InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    if loc == ("body",) and first.get("type") == "missing":
        return InvalidRequest(
            "The request needs a JSON body (Content-Type: application/json).",
            code="invalid_body",
        )
    param = _param_of(loc)
    message = str(first.get("msg", "invalid value"))
    if param:
        message = f"Invalid value for '{param}': {message}"
    more = len(errors) - 1
    if more > 0:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return InvalidRequest(message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception that can leave a handler onto an OpenAI error body."""

    def answer(request: Request, api: APIError) -> JSONResponse:
        rec = getattr(request.state, "record", None)
        if rec is not None:
            rec.error_type = api.type
        return _json(api)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return answer(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return answer(request, _validation_error(exc, request))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail) if exc.detail else "error"
        code = "request_too_large" if exc.status_code == 413 else None
        if exc.status_code == 400 and message == _BODY_PARSE_FAILED:
            # JSON that the parser gives up on (nesting too deep): the same answer as any other
            # unparsable body.
            return answer(request, _invalid_json())
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        headers = dict(exc.headers) if exc.headers else None
        return answer(request, APIError(exc.status_code, message, code=code, headers=headers))

    async def on_engine(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        return answer(request, from_engine_error(exc))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(
            request, APIError(500, "The server had an error while processing your request.")
        )

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(ClientDisconnected, on_client_disconnected)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(EngineError, on_engine)
    app.add_exception_handler(Exception, on_unexpected)


class BodySizeLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before any handler reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        exc = _BodyTooLarge(self.max_bytes)
        response = _json(APIError(413, exc.detail, code="request_too_large"))
        await response({"type": "http"}, _no_receive, send)


class _BodyTooLarge(StarletteHTTPException):
    # An HTTPException so that FastAPI's body parsing passes it on instead of calling it a 400.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {max_bytes} bytes.")


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
