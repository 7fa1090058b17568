"""The one place domain errors and gRPC status codes meet.

- Servers: ``ErrorInterceptor`` (installed by every ServiceHost) turns a
  ``VirtwireError`` raised by any handler into the status of ``STATUS_OF``,
  with the error's message as details. Handlers just raise.
- Clients: ``error_from_rpc`` (or the ``translated`` context manager) turns a
  ``grpc.RpcError`` back into the domain error of ``ERROR_OF``, so callers
  catch domain errors only and the CLI picks its exit code from the type.
- Servers that forward a call (the orchestrator): ``forwarded`` passes the
  callee's failure on with its own status and details.

Exceptions that are not VirtwireErrors are bugs: gRPC answers UNKNOWN and logs
the traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn, ParamSpec, TypeVar

import grpc

from virtwire.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    DeadlineError,
    LimitError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    RemoteError,
    UnavailableError,
    VirtwireError,
)

#: Domain error type -> the status a server answers with. The most derived
#: type listed in an error's MRO wins.
STATUS_OF: dict[type[VirtwireError], grpc.StatusCode] = {
    VirtwireError: grpc.StatusCode.INTERNAL,
    RemoteError: grpc.StatusCode.INTERNAL,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    OutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    # A taken name, a busy TAP, a port in use, a cap reached: the request is
    # fine, the state of the host is not.
    ConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    LimitError: grpc.StatusCode.FAILED_PRECONDITION,
    BackendError: grpc.StatusCode.FAILED_PRECONDITION,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineError: grpc.StatusCode.DEADLINE_EXCEEDED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}

#: Status a client received -> the domain error it raises.
ERROR_OF: dict[grpc.StatusCode, type[VirtwireError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ConfigError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
}

P = ParamSpec("P")
T = TypeVar("T")


def status_for(exc: VirtwireError) -> grpc.StatusCode:
    """The status code ``STATUS_OF`` gives ``exc``'s type; an error translated from
    a call (``error_from_rpc``, ``forwarded``) keeps the status it came with, so a
    server passing a callee's failure on answers as the callee did."""
    received = getattr(exc, "status", None)
    if isinstance(received, grpc.StatusCode):
        return received
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], exc: VirtwireError) -> NoReturn:
    """End the RPC with ``exc``'s status and message."""
    await context.abort(status_for(exc), str(exc))
    raise AssertionError("context.abort returned")  # pragma: no cover


def call_status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call (UNKNOWN for a bare RpcError)."""
    if isinstance(exc, (grpc.Call, grpc.aio.AioRpcError)):
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.UNKNOWN, str(exc)


def _received(code: grpc.StatusCode, message: str) -> VirtwireError:
    error = ERROR_OF.get(code, RemoteError)(message)
    error.status = code  # type: ignore[attr-defined]
    return error


def error_from_rpc(exc: grpc.RpcError, where: str = "") -> VirtwireError:
    """The domain error for a failed call, its ``status`` the code received.

    With ``where`` (the peer, for a message a user reads): "cannot reach WHERE:
    DETAILS" for UNAVAILABLE, "WHERE: CODE: DETAILS" otherwise. Without: the
    details, followed by " (CODE)" for a code ``ERROR_OF`` has no type for.
    """
    code, details = call_status(exc)
    if code == grpc.StatusCode.UNAVAILABLE and where:
        message = f"cannot reach {where}: {details}"
    elif where:
        message = f"{where}: {code.name}: {details}"
    elif code in ERROR_OF:
        message = details
    else:
        message = f"{details} ({code.name})"
    return _received(code, message)


@contextlib.contextmanager
def translated(where: str = "") -> Iterator[None]:
    """Raise the domain error for any ``grpc.RpcError`` inside the block
    (works around ``await``s too)."""
    try:
        yield
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, where) from exc


@contextlib.contextmanager
def forwarded() -> Iterator[None]:
    """For a handler that forwards a call: a failure inside the block becomes the
    domain error of ``ERROR_OF`` with the callee's details as its message, and the
    interceptor answers with the callee's status."""
    try:
        yield
    except grpc.RpcError as exc:
        raise _received(*call_status(exc)) from exc


def translate_errors(where: str = "") -> Callable[[Callable[P, Awaitable[T]]],
                                                  Callable[P, Awaitable[T]]]:
    """Decorator form of ``translated`` for coroutine functions."""
    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with translated(where):
                return await func(*args, **kwargs)
        return wrapper
    return decorate


Around = Callable[[grpc.aio.ServicerContext[Any, Any], str],
                  contextlib.AbstractAsyncContextManager[None]]


def wrap_method_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str,
                        around: Around) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with each call run inside ``around(context, method)``,
    keeping its arity and form (coroutine or async generator)."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_call(handler.unary_unary, method, around), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_call(handler.stream_unary, method, around), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_call(handler.unary_stream, method, around), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _wrap_call(handler.stream_stream, method, around), **kwargs)


def _wrap_call(inner: Callable[..., Any], method: str, around: Around) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):
        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            async with around(context, method):
                async for item in inner(request, context):
                    yield item
        return generator

    async def coroutine(request: Any, context: Any) -> Any:
        async with around(context, method):
            return await inner(request, context)
    return coroutine


@contextlib.asynccontextmanager
async def _abort_on_domain_error(context: grpc.aio.ServicerContext[Any, Any],
                                 method: str) -> AsyncIterator[None]:
    try:
        yield
    except VirtwireError as exc:
        await abort_for(context, exc)


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A server interceptor that runs chosen handlers inside ``around``."""

    def wraps(self, method: str) -> bool:
        """Whether calls to ``method`` go through ``around``."""
        return True

    def around(self, context: grpc.aio.ServicerContext[Any, Any],
               method: str) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any]]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.wraps(method):
            return handler
        return wrap_method_handler(handler, method, self.around)


class ErrorInterceptor(WrappingInterceptor):
    """Answers every handler's ``VirtwireError`` with its ``STATUS_OF`` status."""

    def around(self, context: grpc.aio.ServicerContext[Any, Any],
               method: str) -> contextlib.AbstractAsyncContextManager[None]:
        return _abort_on_domain_error(context, method)
