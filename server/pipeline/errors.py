"""A request's failure as the gRPC status and message the caller gets."""

import functools
import inspect
import logging

import grpc

log = logging.getLogger("camserve.errors")


class RequestError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        """`http_status`: where HTTP says more than the gRPC code's usual mapping (413)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def as_request_error(err: Exception) -> RequestError:
    """err itself, or for a bug (logged) an INTERNAL error that shows no trace."""
    if isinstance(err, RequestError):
        return err
    log.exception("unexpected error", exc_info=err)
    return RequestError(grpc.StatusCode.INTERNAL, "internal server error (logged); please report it")


def fail(context, err: Exception):
    """Gives a call err's status; the handler then returns nothing, and grpc sends the
    status alone. Not context.abort: grpc keeps the exception it raises on the call's
    state, whose traceback holds the handler's frames and so the request, in a cycle
    only the collector frees; a burst of refused 3 MB calls kept hundreds of MB alive."""
    failure = as_request_error(err)
    context.set_code(failure.code)
    context.set_details(failure.message)


def failing_with_status(handler):
    """A unary-response gRPC handler (a coroutine method) whose every failure leaves
    by fail(): the call's status, the handler returning nothing. Not for response
    streams, which fail each request in band (streams.completion_order)."""
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{handler.__qualname__} is not a coroutine function: failing_with_status is for unary responses")

    @functools.wraps(handler)
    async def answer(self, request, context):
        try:
            return await handler(self, request, context)
        except Exception as err:  # noqa: BLE001 - every failure leaves as a status
            fail(context, err)

    return answer
