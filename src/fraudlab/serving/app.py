"""The scoring service's HTTP API (FastAPI on uvicorn): requests in, ``Scorer`` calls, answers
out, with authentication, request limits and Prometheus metrics.

Decisions a client sees (docs/serving.md):

* Unknown fields are rejected (422), so a misspelt field is never silently ignored.
* Ids are JSON integers (int64), or strings for the columns named in ``text_ids``; amounts are
  JSON numbers, finite, >= 0 and at most ``max_amount``; ``tx_datetime`` is ISO 8601 text: with
  an offset it is converted to UTC, without one it is read as UTC (the training data's zone),
  with at most nanosecond precision (never rounded).
* Concurrent requests are scored together (one history read, one model call, one durable
  write): a request is answered once what it sent is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import itertools
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
)

from fraudlab.integrity.lock import recorded
from fraudlab.monitoring.drift import DriftWindow
from fraudlab.monitoring.reference import read_reference_profile
from fraudlab.serving.clock import Clock
from fraudlab.serving.files import ServedFiles
from fraudlab.serving.health import RedisHealth, StoreHealth, StoreUnavailableError, kind_of
from fraudlab.serving.protocol import REFUSED_STATUS, Limits
from fraudlab.serving.scorer import Refused, Scorer, load_scorer
from fraudlab.serving.store import (
    Checkpointer,
    HistoryStore,
    Transaction,
    UnknownTransactionError,
    id_value,
    open_history,
)

log = logging.getLogger(__name__)

_INT64 = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
_EPOCH = datetime(1970, 1, 1)
# what int64 nanoseconds hold (pandas' Timestamp range), as the batch contract accepts
_MIN_NS, _MAX_NS = -(2**63) + 1, 2**63 - 1
# ISO 8601 as the batch contract reads it (a test runs both on one battery): a date, then
# optionally "T" or a space and hh[:mm[:ss[.fraction]]], then optionally Z or an offset. Python's
# fromisoformat alone would also take any separator character, or a trailing NUL.
_ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}"  # the date
    r"(?:[T ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d+)?)?)?)?"  # the time of day
    r"(?:Z|[+-]\d{2}(?::?\d{2})?)?",  # the zone
    flags=re.ASCII,
)
_FRACTION = re.compile(r"^(?P<head>.*?\d{2}:\d{2}(?::\d{2})?)[.,](?P<digits>\d+)(?P<tail>.*)$")
# /healthz and /readyz answer without a key: orchestrators probe them
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_ENDPOINTS = frozenset(
    {"/v1/score", "/v1/score/batch", "/v1/labels", "/healthz", "/readyz", "/metrics"}
    | {"/docs", "/openapi.json", "/redoc"}
)


@dataclass(frozen=True)
class Settings:
    """Everything a service process needs; ``api_keys`` empty means no authentication (only
    allowed when the operator asked for it)."""

    model: str = "models/model.joblib"
    serving: str = "models/serving.json"
    reference: str = "models/reference_profile.json"
    lock: str = "dvc.lock"
    store: str = "data/serving/history.db"  # or a Redis URL (serving.redis_store)
    fsync: bool = False  # see `fraudlab serve --fsync`
    api_keys: tuple[str, ...] = ()
    max_batch: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    max_amount: float = 1e9
    earliest: str = "2000-01-01"
    clock: str = "system"  # see fraudlab.serving.clock
    max_ahead_ns: int = 5 * 60 * 10**9
    max_late_ns: int = 86_400 * 10**9
    text_ids: tuple[str, ...] = ()
    metrics_dir: str | None = None  # Prometheus multiprocess directory (several workers)
    model_version: str = ""  # the model's MD5, shown as the API's version
    drift_window: int = 10_000  # recent transactions whose drift /metrics shows (per process)
    limits: Limits = field(default_factory=Limits)  # bounds on clients (serving.protocol)
    store_reserve_bytes: int = 64 * 1024 * 1024  # free space below which writes stop (503)


def parse_time(text: str) -> int:
    """ISO 8601 text as int64 nanoseconds since the epoch, naive UTC, exactly."""
    if not _ISO_8601.fullmatch(text):
        raise ValueError("not an ISO 8601 date and time")
    extra_ns = 0
    match = _FRACTION.match(text)
    if match:
        digits = match["digits"]
        if len(digits) > 9:
            raise ValueError("more than nanosecond precision")
        # datetime keeps microseconds: the digits after the sixth are added back as nanoseconds
        extra_ns = int(digits[6:9].ljust(3, "0")) if len(digits) > 6 else 0
        text = f"{match['head']}.{digits[:6]}{match['tail']}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO 8601 date and time") from None
    try:
        if when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # year 1 moved back by its offset, or year 9999 forward
        raise ValueError("outside the years a timestamp can hold") from None
    ns = (when - _EPOCH) // timedelta(microseconds=1) * 1000 + extra_ns
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ValueError("outside the years a timestamp can hold")
    return ns


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_TRANSACTION_ID = _INT64  # any int64, as the batch contract accepts
_TEXT_ID = Annotated[str, Field(strict=True, min_length=1, max_length=256)]


def clock_of(settings: Settings) -> Clock:
    return Clock(
        settings.clock,
        ahead=settings.max_ahead_ns,
        late=settings.max_late_ns,
        earliest=parse_time(settings.earliest),
    )


def transaction_model(settings: Settings) -> type[BaseModel]:
    """The request schema of one transaction under ``settings`` (id types, amount cap, dates;
    whether a time is inside the accepted window is the scorer's to say, against the store)."""
    earliest = parse_time(settings.earliest)

    def in_range(value: str) -> int:
        # validated into nanoseconds once: the handlers use the number
        ns = parse_time(value)
        if ns < earliest:
            raise ValueError(f"before {settings.earliest}")
        return ns

    def id_type(column: str) -> Any:
        return (_TEXT_ID if column in settings.text_ids else _INT64, ...)

    return create_model(
        "TransactionIn",
        __base__=_Contract,
        __validators__={"in_range": field_validator("tx_datetime")(in_range)},
        transaction_id=(_TRANSACTION_ID, ...),
        tx_datetime=(Annotated[str, Field(examples=["2018-09-01T12:34:56"])], ...),
        customer_id=id_type("customer_id"),
        terminal_id=id_type("terminal_id"),
        tx_amount=(
            Annotated[float, Field(ge=0, le=settings.max_amount, allow_inf_nan=False)],
            ...,
        ),
    )


def request_models(settings: Settings) -> dict[str, type[BaseModel]]:
    transaction = transaction_model(settings)

    class BatchIn(_Contract):
        transactions: Annotated[
            list[transaction], Field(min_length=1, max_length=settings.max_batch)
        ]

    class LabelIn(_Contract):
        transaction_id: _TRANSACTION_ID
        tx_fraud: Annotated[int, Field(strict=True, ge=0, le=1)]

    class LabelsIn(_Contract):
        labels: Annotated[list[LabelIn], Field(min_length=1, max_length=settings.max_batch)]

    return {"score": transaction, "batch": BatchIn, "labels": LabelsIn}


def request_fields(row: Any) -> dict:
    """A canonical row (e.g. from ``DataFrame.itertuples``) as the JSON object ``/v1/score``
    takes: what a client sends, and the inverse of ``to_transaction``."""
    return {
        "transaction_id": int(row.transaction_id),
        "tx_datetime": pd.Timestamp(row.tx_datetime).isoformat(),
        "customer_id": id_value(row.customer_id),
        "terminal_id": id_value(row.terminal_id),
        "tx_amount": float(row.tx_amount),
    }


def to_transaction(item: BaseModel) -> Transaction:
    return Transaction(
        transaction_id=item.transaction_id,
        time=item.tx_datetime,  # nanoseconds (see transaction_model)
        customer_id=item.customer_id,
        terminal_id=item.terminal_id,
        amount=item.tx_amount,
    )


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, details: list | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def _problems(error: ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as (field, problem) pairs a client can act on."""
    problems = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "body"
        problem = item["msg"]
        if item["type"] == "extra_forbidden":
            problem = "unknown field"
        elif item["type"] == "missing":
            problem = "missing"
        elif item["type"] == "value_error":
            problem = str(item.get("ctx", {}).get("error", problem))
        problems.append({"field": location, "problem": problem})
    return problems


class _AmbiguousJSONError(Exception):
    pass


class _Underflow(float):
    """A number literal that is not zero but that float64 reads as 0.0."""

    text = ""


_NONZERO_DIGIT = re.compile(r"[1-9]")


def _exact_float(text: str) -> float:
    value = float(text)
    if value == 0.0 and _NONZERO_DIGIT.search(text.lower().split("e", 1)[0]):
        underflow = _Underflow(0.0)
        underflow.text = text
        return underflow
    return value


def _unambiguous_object(pairs: list[tuple[str, Any]]) -> dict:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            # which of the two counts is a guess another parser could make differently
            raise _AmbiguousJSONError(f"{key}: given more than once")
        if isinstance(value, _Underflow):
            raise _AmbiguousJSONError(
                f"{key}: {value.text} is too small to represent (it would be read as 0)"
            )
        found[key] = value
    return found


def _require_unambiguous(body: bytes) -> None:
    """Refuse what a JSON parser reads silently one way: a key given twice (the last would
    win) and a non-zero number read as 0.0; anything else is pydantic's to judge."""
    try:
        json.loads(body, object_pairs_hook=_unambiguous_object, parse_float=_exact_float)
    except _AmbiguousJSONError as exc:
        raise RequestError(422, f"invalid request: {exc}") from None
    except (ValueError, RecursionError):
        pass  # malformed: pydantic says how


def parse_body(body: bytes, *, adapter: TypeAdapter, content_type: str | None) -> Any:
    if not (content_type or "").split(";")[0].strip().lower() == "application/json":
        raise RequestError(415, f"content type must be application/json, not {content_type!r}")
    _require_unambiguous(body)
    try:
        return adapter.validate_json(body)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors(include_url=False)):
            raise RequestError(400, f"malformed JSON: {error.errors()[0]['msg']}") from None
        problems = _problems(error)
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
        raise RequestError(422, f"invalid request: {summary}", details=problems) from None


def error_body(message: str, *, details: list | None = None) -> bytes:
    return orjson.dumps({"error": message, **({"details": details} if details else {})})


def error_response(status: int, message: str, *, details: list | None = None) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 413:
        # the rest of the body is not wanted: the connection closes (lingering, so the client
        # still reads this answer; see serving.protocol)
        headers = {"Connection": "close"}
    return Response(
        error_body(message, details=details),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


# A POST endpoint's work: (body, content type) -> (status, JSON body)
Endpoint = Callable[[bytes, str | None], Awaitable[tuple[int, bytes]]]


def _answering(handler: Endpoint) -> Endpoint:
    """``handler`` with a refused request (RequestError) answered as the client's error, and
    anything unexpected as a logged 500."""

    async def answer(body: bytes, content_type: str | None) -> tuple[int, bytes]:
        try:
            return await handler(body, content_type)
        except RequestError as exc:
            return exc.status, error_body(exc.message, details=exc.details)
        except StoreUnavailableError as exc:
            return 503, error_body(f"the history store cannot take writes now: {exc}")
        except Exception:
            log.exception("request failed")
            return 500, error_body("internal error; see the service log")

    return answer


class IdleCollector:
    """Python's cyclic garbage collector run between scoring rounds, when no request waits,
    instead of whenever allocations cross its threshold: a collection inside a round delays
    every request waiting for the round. Generations are collected in
    CPython's default proportions; past ``busy_limit`` pending allocations a busy process
    collects anyway, so a saturated service stays bounded in memory."""

    def __init__(self, *, young: int = 700, busy_limit: int = 50_000) -> None:
        self.young = young
        self.busy_limit = busy_limit

    def __enter__(self) -> IdleCollector:
        # what was loaded lives as long as the process: keep it out of every collection
        gc.collect()
        gc.freeze()
        gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.enable()
        gc.unfreeze()

    def after_round(self, *, idle: bool) -> None:
        allocated, young_collections, middle_collections = gc.get_count()
        if allocated < (self.young if idle else self.busy_limit):
            return
        # CPython's default thresholds: every 10th collection also takes the next generation
        generation = 2 if middle_collections >= 10 else 1 if young_collections >= 10 else 0
        gc.collect(generation)


class Batcher:
    """Collects the jobs of concurrent requests and scores them in one ``Scorer`` call."""

    def __init__(
        self, scorer: Scorer, metrics: Any, *, collector: IdleCollector, health: StoreHealth
    ) -> None:
        self.scorer = scorer
        self.metrics = metrics
        self.collector = collector
        self.health = health
        self._pending: list[tuple[list[Transaction], asyncio.Future]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, job: list[Transaction]) -> list[str] | Refused:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            await asyncio.sleep(0)  # let requests already read join this round
            self._ready.clear()
            taken, self._pending = self._pending, []
            self.metrics.batch_size(sum(len(job) for job, _ in taken))
            outcomes = self._score([job for job, _ in taken])
            for (_, future), outcome in zip(taken, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            self.collector.after_round(idle=not self._pending)

    def _score(self, jobs: list[list[Transaction]]) -> list:
        """Per job, its answers, a Refused or the exception to answer with."""
        try:
            self.health.require()
            outcomes = self.scorer.score(jobs)
        except StoreUnavailableError as exc:
            return [exc] * len(jobs)
        except self.health.errors as exc:  # not written; the health check logs it once
            return [self.health.failed(exc)] * len(jobs)
        except Exception as exc:
            log.exception("scoring failed")
            return [exc] * len(jobs)
        self.health.succeeded()
        self.metrics.scored(
            self.scorer.last_scores,
            threshold=self.scorer.config.threshold,
            late=self.scorer.last_late,
            features=self.scorer.last_features,
            stale=self.scorer.last_stale,
        )
        return outcomes


def _authorized(header: bytes | None, keys: tuple[bytes, ...]) -> bool:
    # HTTP auth schemes are case-insensitive (RFC 9110): "bearer" is "Bearer"
    if header is None or header[:7].lower() != b"bearer ":
        return False
    given = header[7:].strip()
    # every key compared in full, whatever matches: the time taken says nothing about keys
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


class _BodyTooLargeError(Exception):
    pass


class _ClientGoneError(Exception):
    pass


class Guard:
    """ASGI middleware: request metrics, authentication and the body size limit, in front of
    every route (the docs included)."""

    def __init__(
        self, app: Any, *, settings: Settings, metrics: Any, endpoints: dict[str, Endpoint]
    ) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in settings.api_keys)
        self.max_body = settings.max_body_bytes
        self.metrics = metrics
        self.limits = settings.limits  # read by serving.protocol.BoundedProtocol
        # served here, straight from ASGI: they are the hot path, and FastAPI's routing and
        # Starlette's request and response objects cost more than the rest of a request's
        # handling; FastAPI keeps their routes (for the docs) over the same handlers
        self.endpoints = endpoints

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        status = 500
        response_started = False

        async def send_and_record(message: dict) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        headers = dict(scope["headers"])
        try:
            refusal = self._refusal(scope, headers, path)
            if refusal is not None:
                await refusal(scope, receive, send_and_record)
                return
            endpoint_handler = self.endpoints.get(path) if scope["method"] == "POST" else None
            if endpoint_handler is None:
                await self.app(scope, self._limited(receive), send_and_record)
                return
            body = await self._body(self._limited(receive))
            content_type = headers.get(b"content-type")
            code, payload = await endpoint_handler(
                body, None if content_type is None else content_type.decode("latin-1")
            )
            await send_and_record(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send_and_record({"type": "http.response.body", "body": payload})
        except _BodyTooLargeError:
            if not response_started:
                await self._too_large()(scope, receive, send_and_record)
        except _ClientGoneError:
            # the protocol's answer (a 408), or nginx's code for a client that left before
            # its answer
            status = scope.get(REFUSED_STATUS, 499)
        finally:
            self.metrics.request(endpoint, status=status, seconds=time.perf_counter() - started)

    def refused(self, status: int) -> None:
        """Count a request the protocol answered itself (431, 408, 400, 503)."""
        self.metrics.request("other", status=status, seconds=0.0)

    def _refusal(self, scope: dict, headers: dict[bytes, bytes], path: str) -> Response | None:
        if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
            # which one would count is a guess a proxy and this server could make differently
            return error_response(400, "more than one Authorization header")
        if (
            self.keys
            and path not in _OPEN_PATHS
            and not _authorized(headers.get(b"authorization"), self.keys)
        ):
            return error_response(401, "missing or wrong API key (Authorization: Bearer <key>)")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return self._too_large()
        return None

    @staticmethod
    async def _body(receive: Callable[[], Awaitable[dict]]) -> bytes:
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGoneError
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    def _too_large(self) -> Response:
        return error_response(413, f"request body larger than {self.max_body} bytes")

    def _limited(self, receive: Callable) -> Callable[[], Awaitable[dict]]:
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _BodyTooLargeError
            return message

        return limited


def create_app(settings: Settings) -> Any:
    """The ASGI application of one service process."""
    from fraudlab.serving.metrics import ServiceMetrics

    models = request_models(settings)
    adapters = {name: TypeAdapter(model) for name, model in models.items()}
    metrics = ServiceMetrics(settings.metrics_dir)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        served = load_served(settings)
        checkpointer = None
        if served.store.kind == "redis":
            health: StoreHealth = RedisHealth(served.store, on_change=metrics.store_up)
        else:
            health = StoreHealth(settings.store, reserve_bytes=settings.store_reserve_bytes,
                                 on_change=metrics.store_up)  # fmt: skip
            checkpointer = Checkpointer(settings.store).start()
        files = ServedFiles(served.md5s, on_change=metrics.served_file_changed)
        metrics.describe_model(served.scorer)
        metrics.watch(served.window)
        loop = asyncio.get_running_loop()
        with IdleCollector() as collector:
            batcher = Batcher(served.scorer, metrics, collector=collector, health=health)
            batcher.start()
            watcher = loop.create_task(_watch(health, files))
            state.update(served=served, scorer=served.scorer, batcher=batcher, health=health,
                         files=files)  # fmt: skip
            reloading = ReloadOnHangup(settings, state=state, metrics=metrics)
            loop.add_signal_handler(signal.SIGHUP, reloading.start)
            log.info("serving model %s (%s)", served.scorer.model_version,
                     served.scorer.model.family)  # fmt: skip
            try:
                yield
            finally:
                loop.remove_signal_handler(signal.SIGHUP)
                watcher.cancel()
                await batcher.stop()
                if checkpointer is not None:
                    checkpointer.stop()
                state["served"].store.close()
                state.clear()

    app = FastAPI(
        title="fraudlab scoring service",
        summary="Scores payment transactions with the model `dvc repro` produced.",
        version=settings.model_version or "unversioned",
        lifespan=lifespan,
    )

    async def scored(job: list[Transaction]) -> list[str]:
        outcome = await state["batcher"].submit(job)
        if isinstance(outcome, Refused):
            raise RequestError(outcome.status, outcome.message)
        return outcome

    async def score_one(body: bytes, content_type: str | None) -> tuple[int, bytes]:
        item = parse_body(body, adapter=adapters["score"], content_type=content_type)
        (answer,) = await scored([to_transaction(item)])
        return 200, answer.encode()

    async def score_batch(body: bytes, content_type: str | None) -> tuple[int, bytes]:
        batch = parse_body(body, adapter=adapters["batch"], content_type=content_type)
        answers = await scored([to_transaction(item) for item in batch.transactions])
        return 200, ('{"results":[' + ",".join(answers) + "]}").encode()

    async def record_labels(body: bytes, content_type: str | None) -> tuple[int, bytes]:
        request = parse_body(body, adapter=adapters["labels"], content_type=content_type)
        pairs = [(item.transaction_id, item.tx_fraud) for item in request.labels]
        health = state["health"]
        health.require()
        try:
            changed = state["scorer"].label(pairs)
        except UnknownTransactionError as exc:
            raise RequestError(404, str(exc)) from None
        except health.errors as exc:
            raise health.failed(exc) from None
        health.succeeded()
        metrics.labels(pairs, changed=changed)
        for tx_id, before, after in changed:
            log.info("transaction %d: label changed from %d to %d", tx_id, before, after)
        return 200, orjson.dumps({"recorded": len(pairs), "changed": len(changed)})

    endpoints: dict[str, Endpoint] = {
        "/v1/score": _answering(score_one),
        "/v1/score/batch": _answering(score_batch),
        "/v1/labels": _answering(record_labels),
    }

    async def respond(path: str, request: Request) -> Response:
        code, payload = await endpoints[path](
            await request.body(), request.headers.get("content-type")
        )
        return Response(payload, status_code=code, media_type="application/json")

    schema = {name: model.model_json_schema() for name, model in models.items()}

    def body_doc(name: str) -> dict:
        return {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema[name]}},
            }
        }

    # Guard answers these POSTs itself (see Guard.endpoints); the routes document them
    @app.post("/v1/score", openapi_extra=body_doc("score"))
    async def score(request: Request) -> Response:
        """Score one transaction; it then joins the history. The same transaction again gets
        the same answer; the same id with other content is a 409."""
        return await respond("/v1/score", request)

    @app.post("/v1/score/batch", openapi_extra=body_doc("batch"))
    async def batch(request: Request) -> Response:
        """Score up to the configured maximum of transactions in (time, id) order; answers in
        the request's order. One conflicting id refuses the whole batch (409)."""
        return await respond("/v1/score/batch", request)

    @app.post("/v1/labels", openapi_extra=body_doc("labels"))
    async def labels(request: Request) -> Response:
        """Confirmed labels; they enter terminal windows once older than the label delay.
        A label for an unknown transaction refuses the whole request (404)."""
        return await respond("/v1/labels", request)

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> Response:
        """The model is loaded, the store takes writes and the scoring loop runs."""
        ready = "scorer" in state and state["batcher"].alive
        # no model version nor file names here: this endpoint answers without a key
        body = {"status": "ready" if ready else "not ready"}
        if ready and (reason := state["health"].reason) is not None:
            ready = False
            body = {"status": "not ready", "store": kind_of(reason)}
        if ready and (changed := state["files"].changed()):
            # still ready: the verified copies are served; the operator should know
            body["changed_on_disk"] = [Path(name).name for name in changed]
        return Response(
            orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
        )

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        served = state.get("served")
        content, media_type = metrics.exposition(None if served is None else served.store)
        return Response(content, media_type=media_type)

    return Guard(app, settings=settings, metrics=metrics, endpoints=endpoints)


async def _watch(health: StoreHealth, files: ServedFiles, *, every: float = 0.5) -> None:
    """Look at the store while no request does, so that readiness follows it, and at the
    served files every few seconds."""
    for turn in itertools.count():
        await asyncio.sleep(every)
        if health.blocking:
            await asyncio.to_thread(health.check)
        else:
            health.check()
        if turn % 6 == 5:
            files.check()


@dataclass
class Served:
    """What one service process serves, loaded and checked together."""

    store: HistoryStore  # this scorer's own connection
    scorer: Scorer
    window: DriftWindow
    md5s: dict[str, str]  # each served file's MD5, as dvc.lock recorded and the load checked


def load_served(settings: Settings) -> Served:
    """Open the store and load the model, its serving config and reference profile, each
    checked against dvc.lock (blocking: seconds at the reference size)."""
    store = open_history(settings.store, fsync=settings.fsync, autocheckpoint=False)
    try:
        scorer = load_scorer(
            model_path=settings.model,
            serving_path=settings.serving,
            lock_path=settings.lock,
            store=store,
            clock=clock_of(settings),
        )
        reference = read_reference_profile(
            settings.reference,
            lock_path=settings.lock,
            model_path=settings.model,
            features=scorer.model.features,
        )
    except BaseException:
        store.close()
        raise
    window = DriftWindow(
        reference,
        features=scorer.names,
        size=settings.drift_window,
        threshold=scorer.config.threshold,
    )
    md5s = {
        path: recorded(path, lock_path=settings.lock).md5
        for path in (settings.model, settings.serving, settings.reference)
    }
    return Served(store=store, scorer=scorer, window=window, md5s=md5s)


class ReloadOnHangup:
    """SIGHUP: load the served files again, checked against dvc.lock, in a thread while the
    current model keeps serving; swap between two scoring rounds (no request waits or is
    dropped); on any failure keep serving what was served, and say why in one line."""

    def __init__(self, settings: Settings, *, state: dict, metrics: Any) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            log.warning("SIGHUP: a reload is already running")
            return
        self._task = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        log.warning("SIGHUP: loading %s again", self.settings.model)
        try:
            served = await asyncio.to_thread(load_served, self.settings)
        except Exception as exc:
            log.error("SIGHUP: reload refused, still serving %s: %s",
                      self.state["scorer"].model_version, exc)  # fmt: skip
            return
        old = self.state["served"]
        # between rounds: the batcher's loop and this coroutine share the event loop
        self.state["batcher"].scorer = served.scorer
        self.state.update(served=served, scorer=served.scorer)
        self.metrics.describe_model(served.scorer)
        self.metrics.watch(served.window)
        self.state["files"].serve(served.md5s)
        old.store.close()
        log.warning("SIGHUP: now serving model %s (was %s)", served.scorer.model_version,
                    old.scorer.model_version)  # fmt: skip


def settings_path(directory: str | Path) -> Path:
    return Path(directory) / "settings.json"
