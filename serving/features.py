"""Feature endpoints: call (JSON or server-sent events) and batch, served by `FeatureCalls`;
listing and contracts, as FastAPI routes."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from featurelm.engine import InputError, NotFoundError, OutputError, Result, RunOptions, json_bytes
from featurelm.engine.errors import BodyTooLargeError, TooLargeError
from featurelm.engine.loader import LoadedFeature
from featurelm.engine.streaming import Delta, FeatureStream, output_text
from featurelm.serving import problems
from featurelm.serving.auth import Caller, CallerDep, resolve_caller
from featurelm.serving.idempotency import HEADER as IDEMPOTENCY_HEADER
from featurelm.serving.idempotency import Stored, check_key
from featurelm.serving.logs import ROUTE
from featurelm.serving.models import FeatureContract, FeatureList, FeatureSummary
from featurelm.serving.state import Services, services

SSE = "text/event-stream"
SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))

router = APIRouter(tags=["features"])


def parse_options(raw: Any) -> RunOptions:
    if raw is None:
        return RunOptions()
    if not isinstance(raw, dict) or set(raw) - {"route", "cache"}:
        raise InputError("options may contain only 'route' and 'cache'")
    cache = raw.get("cache", "default")
    route = raw.get("route")
    if cache not in ("default", "no-cache", "no-store") or not (
            route is None or isinstance(route, str)):
        raise InputError("options.cache must be default, no-cache or no-store; "
                         "options.route a string")
    return RunOptions(route=route, cache_read=cache != "no-cache", cache_write=cache != "no-store")


class _StrictJSON(ValueError):
    """Valid for Python's json module, but not strict JSON (RFC 8259) or ambiguous."""


def _refuse_constant(name: str) -> Any:
    raise _StrictJSON(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _StrictJSON(f"number {text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _StrictJSON(f"duplicate key {key[:80]!r}")
        data[key] = value
    return data


def parse_body(raw: bytes, field: str) -> dict[str, Any]:
    """The JSON body `{field: ..., "options": {...}}` (field is "input" or "inputs").

    Strict: no NaN/Infinity (they would flow into outputs as invalid JSON), no duplicate keys
    (which value wins differs between parsers), and hostile nesting is a 422, not a 500."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InputError("request body is nested too deeply") from None
    except _StrictJSON as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError("request body is not valid JSON") from None
    if not isinstance(data, dict) or field not in data or set(data) - {field, "options"}:
        raise InputError(f'request body must be {{"{field}": ..., "options": {{...}}}}')
    return data


def _json(data: Any, status: int = 200) -> Response:
    return Response(json_bytes.dumps(data), status_code=status,
                    media_type="application/json")


def _sse(event: str, data: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json_bytes.dumps(data))


def _counted(svc: Services, feature: LoadedFeature, exc: Exception) -> None:
    """Count a failed call in the validation metrics (JSON, batch and streams alike)."""
    if isinstance(exc, InputError) and exc.status == 422:
        svc.metrics.on_input_refused(feature.name)
    elif isinstance(exc, OutputError):
        svc.metrics.on_output_failed(feature.name, len(exc.attempts))


async def _run(svc: Services, caller: Caller, feature: LoadedFeature, input: Any,
               options: RunOptions) -> Result:
    try:
        result = await svc.engine.run_feature(feature, input, tenant=caller.tenant,
                                              options=options)
    except (InputError, OutputError) as exc:
        _counted(svc, feature, exc)
        raise
    await _account(svc, caller, result, feature)
    return result


def _result_body(result: Result) -> bytes:
    """The body of a 200 answer, and of a stream's `result` event (a replay shows either)."""
    return json_bytes.dumps({"output": result.output, "meta": result.meta.as_dict()})


async def _account(svc: Services, caller: Caller, result: Result,
                   feature: LoadedFeature) -> None:
    svc.metrics.on_result(result.meta)
    svc.metrics.on_output(feature, caller.tenant, result.output)
    if not result.meta.cached:
        await svc.limiter.spend(caller.tenant, result.meta.tokens_in + result.meta.tokens_out)


async def _once(svc: Services, caller: Caller, request: Request, raw: bytes,
                produce: Callable[[], Awaitable[Stored]]) -> Stored:
    """`produce()`, or with an Idempotency-Key the first answer to this key and body."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return await produce()
    # The route is part of the body hash: one key cannot replay across endpoints.
    return await svc.idempotency.run(caller.tenant, key,
                                     request.url.path.encode() + b"\0" + raw, produce)


async def _idempotent(svc: Services, caller: Caller, request: Request, raw: bytes,
                      produce: Callable[[], Awaitable[Stored]]) -> Response:
    stored = await _once(svc, caller, request, raw, produce)
    headers = {"Idempotent-Replayed": "true"} if stored.replayed else None
    return Response(stored.body, status_code=stored.status, media_type="application/json",
                    headers=headers)


async def _admit(svc: Services, caller: Caller, name: str, calls: int) -> LoadedFeature:
    """Resolve the feature for this caller and charge the tenant's limits."""
    feature = await svc.engine.resolve(name, caller.tenant)
    await svc.limiter.take(caller.tenant, calls)
    await svc.limiter.check_quota(caller.tenant)
    return feature


async def call_feature(svc: Services, name: str, request: Request,
                       caller: Caller) -> Response | EventStream:
    request.state.feature = name
    raw = await request.body()
    data = parse_body(raw, "input")
    options = parse_options(data.get("options"))
    feature = await _admit(svc, caller, name, 1)
    svc.metrics.on_input_size(name, caller.tenant, len(raw))
    if SSE in request.headers.get("accept", ""):
        return _stream(svc, caller, feature, data["input"], options, request, raw)

    async def produce() -> Stored:
        result = await _run(svc, caller, feature, data["input"], options)
        return Stored(200, _result_body(result))

    return await _idempotent(svc, caller, request, raw, produce)


def _stream(svc: Services, caller: Caller, feature: LoadedFeature, input: Any,
            options: RunOptions, request: Request, raw: bytes) -> EventStream:
    """The call as server-sent events, on the same pipeline (cache, coalescing, usage) and
    under the same Idempotency-Key as a JSON call: a replay, or a cache hit, streams the
    stored output as one delta."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        check_key(key)  # a malformed key is a plain 422, like any request error
    try:
        # Constructing the stream validates input and budget: those errors are plain 4xx.
        stream = FeatureStream(svc.engine, feature, input, tenant=caller.tenant,
                               options=options)
    except InputError as exc:
        _counted(svc, feature, exc)
        raise
    #: SSE events of the deltas, then None once the call is over (see FeatureStream.events).
    deltas: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def produce() -> Stored:
        async for event in stream.events():
            if isinstance(event, Delta):
                deltas.put_nowait(_sse("delta", {"attempt": event.attempt, "text": event.text}))
            else:
                await _account(svc, caller, event.result, feature)
                return Stored(200, _result_body(event.result))
        raise AssertionError("a feature stream ends with its result")  # pragma: no cover

    # Started now, not after the head is written: with many streams opening at once, each
    # call reaches its model without queueing behind every other stream's head.
    task = asyncio.create_task(_once(svc, caller, request, raw, produce))
    task.add_done_callback(lambda _: deltas.put_nowait(None))

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield _sse("progress", {"stage": "started", "feature": feature.name})
            ended = False
            while not ended:
                # Events that queued up meanwhile (a busy server) go out in one write.
                batch = [await deltas.get()]
                while not deltas.empty():
                    batch.append(deltas.get_nowait())
                ended = batch[-1] is None  # the end marker always comes last
                if chunk := b"".join(event for event in batch if event is not None):
                    yield chunk
            if task.cancelled():
                return  # the client went away
            stored = task.result()
            if stored.replayed:
                yield _sse("progress", {"stage": "replayed", "feature": feature.name})
                yield _sse("delta", {"attempt": 1,
                                     "text": output_text(json.loads(stored.body)["output"])})
            yield b"event: result\ndata: " + stored.body + b"\n\n"
        except Exception as exc:
            _counted(svc, feature, exc)
            _, body, _ = problems.from_exception(exc)
            yield _sse("error", body)

    # EventStream calls stop however the answer ends, started or not.
    return EventStream(events(), stop=task.cancel)


class EventStream:
    """A `text/event-stream` answer of the chunks `events` yields. `stop` is called when the
    answer ends, and as soon as the client goes away (to cancel the call behind it).

    Starlette's StreamingResponse does the same, but watches for the client going away
    through an anyio task group per stream, a few percent of a stream's CPU."""

    def __init__(self, events: AsyncGenerator[bytes, None], stop: Callable[[], object]) -> None:
        self.events = events
        self.stop = stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            # The request body is read: what comes now is the client going away (or, once
            # the answer is complete, the server saying so).
            while (await receive())["type"] != "http.disconnect":
                pass
            self.stop()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": list(SSE_HEADERS)})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            self.stop()
            await self.events.aclose()


async def call_batch(svc: Services, name: str, request: Request, caller: Caller) -> Response:
    request.state.feature = name
    raw = await request.body()
    data = parse_body(raw, "inputs")
    inputs = data["inputs"]
    limit = svc.engine.config.http.batch_max_items
    if not isinstance(inputs, list) or not inputs:
        raise InputError("inputs must be a non-empty list of input objects")
    if len(inputs) > limit:
        raise TooLargeError(f"a batch holds at most {limit} inputs; this one has {len(inputs)}")
    options = parse_options(data.get("options"))
    feature = await _admit(svc, caller, name, len(inputs))
    for input in inputs:
        # Each item is a call of its own for the input-size distribution drift compares. An
        # item may hold a lone surrogate (refused with a 422 by its own call): still countable.
        svc.metrics.on_input_size(name, caller.tenant, len(
            json.dumps(input, ensure_ascii=False, separators=(",", ":")).encode(
                errors="surrogatepass")))
    gate = asyncio.Semaphore(svc.engine.config.http.batch_concurrency)

    async def one(input: Any) -> dict[str, Any]:
        async with gate:
            try:
                result = await _run(svc, caller, feature, input, options)
            except Exception as exc:
                _, body, _ = problems.from_exception(exc)
                return {"error": body}
            return {"output": result.output, "meta": result.meta.as_dict()}

    async def produce() -> Stored:
        results = await asyncio.gather(*(one(i) for i in inputs))
        return Stored(200, json_bytes.dumps({"results": results}))

    return await _idempotent(svc, caller, request, raw, produce)


PREFIX = "/v1/features/"


def json_media_type(content_type: str | None) -> bool:
    """True for a JSON body (application/json, application/*+json) or none declared."""
    if content_type is None:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class FeatureCalls:
    """Serves `POST /v1/features/{name}` and `POST /v1/features/{name}/batch` ahead of
    FastAPI's router, which would try every route in turn and resolve dependencies on each
    call (about a tenth of a call's CPU). Every other request goes on to `app`.

    The operations are in the OpenAPI spec all the same (see serving/openapi.py)."""

    def __init__(self, app: ASGIApp, svc: Services) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        name, _, rest = path[len(PREFIX):].partition("/")
        # GET /v1/features/{name} (the contract) is FastAPI's; batch is POST only.
        if not name or rest not in ("", "batch") or (scope["method"] != "POST" and not rest):
            await self.app(scope, receive, send)
            return
        known = self.svc.engine.feature(name) is not None
        scope[ROUTE] = PREFIX + (name if known else "{name}") + ("/batch" if rest else "")
        if scope["method"] != "POST":
            await problems.problem(405, "Method Not Allowed", "method-not-allowed",
                                   headers={"Allow": "POST"})(scope, receive, send)
            return
        request = Request(scope, receive)
        if not json_media_type(request.headers.get("content-type")):
            # A form or text body is refused unread: a browser may send those cross-site
            # without a CORS preflight.
            await problems.problem(415, "Unsupported media type", "media-type",
                                   "send the body as application/json")(scope, receive, send)
            return
        try:
            caller = await resolve_caller(self.svc, request.headers.get("authorization"))
            request.state.tenant = caller.tenant
            if not known:
                raise NotFoundError(f"unknown feature {name!r}")
            handle = call_batch if rest else call_feature
            response = await handle(self.svc, name, request, caller)
        except BodyTooLargeError:
            raise  # BodyLimitMiddleware answers 413
        except Exception as exc:
            response = problems.exception_response(exc)
        await response(scope, receive, send)


@router.get("/v1/features", response_model=FeatureList, responses=problems.responses(401))
async def list_features(request: Request, caller: CallerDep) -> FeatureList:
    return FeatureList(features=[
        FeatureSummary(name=f.name, version=f.spec.version, description=f.spec.description)
        for f in services(request).engine.features()])


@router.get("/v1/features/{name}", response_model=FeatureContract,
            responses=problems.responses(401, 404))
async def get_feature(name: str, request: Request, caller: CallerDep) -> FeatureContract:
    feature = services(request).engine.feature(name)
    if feature is None:
        raise NotFoundError(f"unknown feature {name!r}")
    spec = feature.spec
    return FeatureContract(name=spec.name, version=spec.version, description=spec.description,
                           input=spec.input, output=spec.output)
