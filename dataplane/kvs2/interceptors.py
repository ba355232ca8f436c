"""RPC metrics as a gRPC server interceptor: every call is counted by service, method and status code.

Why an interceptor: the servicer stays a pure translator, and every RPC — Kvs2, health, future ones — is
measured the same way in one place. Unary calls get a latency histogram; server streams (Watch) are counted
when they end and tracked as open streams, with their events counted by type. Compare-and-set outcomes are
read off the reply here too (`PUBLISHED`/`CONDITION_FAILED`, or a status that leaves the verdict unknown),
so the core needs no hook for them. Labels are the method's names and status code names: closed sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from kvs2 import metrics
from kvs2._proto import kvs2_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

# Statuses after which a conditional write's verdict is unknown to the client: it may still be applied.
_CAS_UNKNOWN = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL"}
_CAS_METHODS = {"/kvs2.Kvs2/Set", "/kvs2.Kvs2/Delete"}
_EVENT_TYPES = {v: pb.WatchEvent.Type.Name(v).lower() for v in pb.WatchEvent.Type.values()}


def _split(full_method: str) -> tuple[str, str]:
    """`/kvs2.Kvs2/Get` → (`kvs2.Kvs2`, `Get`)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _code_of(context: Context, exc: BaseException | None) -> str:
    """The call's final status code name: what the handler set or aborted with; else from the exception."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # older grpc.aio returns the numeric code
        for member in grpc.StatusCode:
            if member.value[0] == code:
                return member.name
    return "OK" if exc is None else "UNKNOWN"


def _cas_outcome(request: Any, reply: Any, code: str) -> str | None:
    if not request.HasField("if_revision"):
        return None
    if code == "OK":
        return "applied" if reply.status == pb.PUBLISHED else "failed"
    return "unknown" if code in _CAS_UNKNOWN else None  # refused (invalid, denied): nothing was written


class MetricsInterceptor(_Interceptor):
    def __init__(self) -> None:
        self._m = metrics.instruments()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        found = await continuation(handler_call_details)
        if found is None:  # no such method: gRPC answers UNIMPLEMENTED
            return found
        handler: Any = found  # the stubs type behaviours as sync; under grpc.aio they are coroutines
        full = handler_call_details.method
        service, method = _split(full)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, service, method, full in _CAS_METHODS),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, service, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return found  # client streams (reflection): not measured

    def _unary(
        self, behaviour: Callable[[Any, Context], Awaitable[Any]], service: str, method: str, cas: bool
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        m = self._m

        async def call(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            reply = None
            failure: BaseException | None = None
            try:
                reply = await behaviour(request, context)
                return reply
            except BaseException as exc:
                failure = exc
                raise
            finally:
                code = _code_of(context, failure)
                m.rpc_requests.labels(service, method, code).inc()
                m.rpc_duration.labels(service, method, code).observe(time.perf_counter() - started)
                outcome = _cas_outcome(request, reply, code) if cas else None
                if outcome is not None:
                    m.cas.labels(outcome).inc()

        return call

    def _stream(
        self, behaviour: Callable[[Any, Context], AsyncIterator[Any]], service: str, method: str
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        m = self._m
        watch = service == "kvs2.Kvs2" and method == "Watch"

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            failure: BaseException | None = None
            if watch:
                m.watch_open.inc()
            try:
                async for item in behaviour(request, context):
                    if watch:
                        m.watch_events.labels(_EVENT_TYPES.get(item.type, "other")).inc()
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if watch:
                    m.watch_open.dec()
                m.rpc_requests.labels(service, method, _code_of(context, failure)).inc()

        return call
