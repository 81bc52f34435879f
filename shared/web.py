"""Flask pieces both services share: the error envelope, scopes, probes, metrics, paging and batches.

Each `register_*` helper is small so an app factory reads as a list of what the service has.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from copy import deepcopy
from inspect import iscoroutinefunction

import orjson
from apispec import BasePlugin
from flask import Flask, Response, current_app, g, has_request_context, jsonify, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api, Blueprint
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, pre_load, utils
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix
from webargs.core import _UNKNOWN_DEFAULT_PARAM
from webargs.flaskparser import FlaskParser, is_json_request

from shared.auth import Forbidden, KeyVerifier, Unauthorized
from shared.config import load_config
from shared.errors import BatchTooLarge, DomainError
from shared.extensions import db, redis_store
from shared.ids import random_id
from shared.ingest import BatchOutcome
from shared.plainload import PlainQueryLoader
from shared.schemas import ErrorEnvelopeSchema
from shared.ratelimit import check_failed_auth_budget, check_rate_limits, count_failed_auth

log = logging.getLogger("segrec.web")

# Paths anyone may call: probes for the orchestrator and the generated API documentation.
PUBLIC_ENDPOINT_PREFIXES = ("healthz", "readyz", "metrics", "api-docs.", "static", "swagger_ui_files")
# A client's X-Request-ID is kept when it is a plain token of sensible length; otherwise one is generated.
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_SECONDS = Histogram(
    "segrec_http_request_seconds",
    "HTTP request latency by service, endpoint and status class",
    ["service", "endpoint", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
# The fallback rate is FALLBACKS over RECOMMENDATIONS (counted by the recommend views as they answer).
RECOMMENDATIONS = Counter("segrec_recommendations_total", "Recommendation answers served, by kind", ["kind"])
FALLBACKS = Counter("segrec_recommendation_fallbacks_total", "Recommendation answers served by a fallback",
                    ["fallback"])


class LabelledChildren:
    """The children of a labelled Prometheus metric, each looked up by `.labels()` once per label values.

    `.labels()` takes the metric's lock and converts every value on each call (about 1 us, three or four
    per recommendation request); a child, once made, is the one `.labels()` keeps answering (nothing here
    removes labels), so a dict lookup returns the same object.
    """

    __slots__ = ("metric", "_children")

    def __init__(self, metric) -> None:
        self.metric = metric
        self._children: dict[tuple, object] = {}

    def __call__(self, *values):
        """The child of these label values (the metric's own, made on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


REQUEST_SECONDS_BY_ENDPOINT = LabelledChildren(REQUEST_SECONDS)
RECOMMENDATIONS_BY_KIND = LabelledChildren(RECOMMENDATIONS)
FALLBACKS_BY_KIND = LabelledChildren(FALLBACKS)


def error_body(status: int, code: str, message: str, details: dict | None = None) -> dict:
    """The one error envelope every endpoint answers with (with the request id when serving a request)."""
    error = {"status": status, "code": code, "message": message, "details": details or {}}
    if has_request_context() and g.get("request_id"):
        error["request_id"] = g.request_id
    return {"error": error}


def error_response(status: int, code: str, message: str, details: dict | None = None) -> Response:
    """A JSON error response in the envelope."""
    response = jsonify(error_body(status, code, message, details))
    response.status_code = status
    return response


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def _validation_details(messages) -> dict:
    """Flatten webargs' {'json': {...}} / {'query': {...}} into field -> errors."""
    if not isinstance(messages, dict):
        return {"_schema": messages}
    details: dict = {}
    for location, errors in messages.items():
        if isinstance(errors, dict):
            details.update(errors)
        else:
            details[location] = errors
    return details


def handle_http_exception(error: HTTPException) -> Response:
    """Werkzeug and flask-smorest aborts, rendered in the envelope."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    code = _HTTP_CODES.get(status, "error")
    message = error.description or "request failed"
    details: dict = {}
    if messages is not None:
        details = _validation_details(messages)
        if status == 400 and "Invalid JSON body." in str(messages):
            code, message = "malformed_json", "the request body is not valid JSON"
        elif status == 422:
            message = "the request did not pass validation"
    if status == 413 and code == "payload_too_large":
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than {limit} bytes"
        details = {"max_bytes": limit}
    return error_response(status, code, message, details)


def handle_domain_error(error: DomainError) -> Response:
    """A typed domain error: its own status and code (and headers, e.g. Retry-After, when it has some)."""
    response = error_response(error.status, error.code, error.message, error.details)
    for name, value in getattr(error, "headers", {}).items():
        response.headers[name] = value
    return response


def handle_too_deep(error: RecursionError) -> Response:
    """A body nested deeper than the parsers recurse (webargs parses JSON with the recursive stdlib decoder)."""
    log.warning("recursion limit on %s %s: %s", request.method, request.path, str(error)[:200])
    return error_response(400, "malformed_json", "the request body is nested too deeply")


def handle_unexpected(error: Exception) -> Response:
    """Anything else: logged with its trace, answered without one."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "an internal error occurred; it has been logged")


def register_errors(app: Flask) -> None:
    """Install the error envelope for every kind of failure, over flask-smorest's own handler."""
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(DomainError, handle_domain_error)
    app.register_error_handler(RecursionError, handle_too_deep)
    app.register_error_handler(Exception, handle_unexpected)


def register_auth(app: Flask) -> None:
    """Attach the key verifier that `require_scope` uses."""
    app.extensions["segrec_keys"] = KeyVerifier(db, cache_seconds=app.config["API_KEY_CACHE_SECONDS"])


def authenticate(scope: str, rate_class: str | None = None):
    """The caller of this request, checked for `scope` and counted against its `rate_class` budget.

    A key this worker verified moments ago costs one Redis round trip (the address's failed-authentication
    budget and the key's windows in one script, shared/ratelimit.py); any other key is checked against the
    address's budget before the database is asked, and a failed attempt spends that budget.
    """
    verifier: KeyVerifier = current_app.extensions["segrec_keys"]
    header = request._get_current_object().environ.get("HTTP_AUTHORIZATION")
    principal = verifier.cached(header)
    if principal is None:
        check_failed_auth_budget()
        try:
            principal = verifier.verify(header)
        except Unauthorized:
            count_failed_auth()
            raise
    allowed = principal.allows(scope)
    # A refused scope spends no budget; a blocked address is refused before the scope is judged.
    check_rate_limits(principal.key_id, (rate_class or scope) if allowed else None)
    if not allowed:
        raise Forbidden(f"this key lacks the '{scope}' scope", {"required_scope": scope})
    return principal


# The error statuses every endpoint behind a key can answer, besides its own (documented in OpenAPI).
AUTHENTICATED_ERROR_RESPONSES = {"400": "BAD_REQUEST", "401": "UNAUTHORIZED", "403": "FORBIDDEN",
                                 "429": "TOO_MANY_REQUESTS"}


def takes_json_body(view) -> bool:
    """True when flask-smorest's @blp.arguments gave the view a JSON body."""
    parameters = getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    return any(parameter.get("in") == "json" for parameter in parameters)


def require_json_body() -> None:
    """A request without the JSON body its endpoint documents is 400 (not an empty object); another format 415."""
    if not request.get_data(cache=True):
        raise BodyRequired("this endpoint needs a JSON request body", {"json": ["a request body is required"]})
    if not request.is_json:
        raise UnsupportedBody("send the body as JSON (Content-Type: application/json)",
                              {"Content-Type": ["application/json"]})


class BodyRequired(DomainError):
    """A request without the JSON body its endpoint needs."""

    status = 400
    code = "bad_request"


class UnsupportedBody(DomainError):
    """A request body that is not JSON."""

    status = 415
    code = "unsupported_media_type"


def require_scope(scope: str, rate_class: str | None = None):
    """Decorator: the caller's key must carry `scope` (or admin); documented in OpenAPI.

    Each key then has a request budget per `rate_class` (default: the scope's name), see shared/ratelimit.py.
    """

    def decorator(view):
        needs_body = takes_json_body(view)

        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            g._get_current_object().principal = authenticate(scope, rate_class)
            if needs_body:
                require_json_body()
            return view(*args, **kwargs)

        wrapper._required_scope = scope
        apidoc = deepcopy(getattr(wrapper, "_apidoc", {}))
        manual = apidoc.setdefault("manual_doc", {})
        manual["security"] = [{"bearerAuth": []}]
        responses = manual.setdefault("responses", {})
        for status, name in AUTHENTICATED_ERROR_RESPONSES.items():
            responses.setdefault(status, name)
        manual.setdefault("description", "")
        manual["description"] = (manual["description"] + f"\n\nRequires scope `{scope}`.").strip()
        wrapper._apidoc = apidoc
        return wrapper

    return decorator


def endpoints_without_scope(app: Flask) -> list[str]:
    """Endpoints that neither check a scope nor are deliberately public (tests assert this is empty)."""
    missing = []
    for endpoint, view in app.view_functions.items():
        if endpoint.startswith(PUBLIC_ENDPOINT_PREFIXES):
            continue
        view_class = getattr(view, "view_class", None)
        handlers = [view]
        if view_class is not None:
            handlers = [getattr(view_class, method.lower()) for method in view_class.methods]
        if not all(getattr(handler, "_required_scope", None) for handler in handlers):
            missing.append(endpoint)
    return missing


def snake_case(name: str) -> str:
    """BoughtTogether -> bought_together."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class OperationIdPlugin(BasePlugin):
    """Give every operation an operationId, `<method>_<view>` (get_bought_together, post_orders), so
    generated clients get readable method names; an operationId set by hand is kept."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        view_name = snake_case(rule.endpoint.rsplit(".", 1)[-1])
        for method, operation in operations.items():
            operation.setdefault("operationId", f"{method}_{view_name}")


SWAGGER_UI_FILES_URL = "/docs/files/"


def register_swagger_ui_files(app: Flask) -> None:
    """Serve Swagger UI's own files from the swagger-ui-bundle package: /docs needs no CDN."""
    from swagger_ui_bundle import swagger_ui_path

    @app.get(f"{SWAGGER_UI_FILES_URL}<path:filename>", endpoint="swagger_ui_files")
    def swagger_ui_files(filename):
        return send_from_directory(str(swagger_ui_path), filename, max_age=86400)


class PlainQueryParser(FlaskParser):
    """webargs' Flask parser, with plainly valid query strings and JSON bodies loaded on a fast path.

    webargs and marshmallow cost about a tenth of a bought-together request in the profile, and most of a
    feedback request. A query whose every parameter is plainly valid gets exactly what webargs would answer
    (PlainQueryLoader reads the schema's own declarations); a JSON body goes to the schema's
    `plain_body(bytes)` when it has one (msgspec Structs mirroring it, shared/plainload.py). Anything
    else, and every other location, is parsed by webargs, so every error and message stays its own.
    """

    QUERY_LOCATIONS = ("query", "querystring")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._query_loaders: dict[int, tuple[Schema, PlainQueryLoader]] = {}

    def parse(self, argmap, req=None, *, location=None, unknown=_UNKNOWN_DEFAULT_PARAM, validate=None, **kwargs):
        """The parsed arguments: from the plain query loader when it answers, else from webargs."""
        if isinstance(argmap, Schema) and validate is None:
            if location in self.QUERY_LOCATIONS and self._unknown_for(location, unknown) == EXCLUDE:
                loaded = self._query_loader(argmap).load((req if req is not None else self.get_default_request()).args)
                if loaded is not None:
                    return loaded
            elif location == "json" and self._plain_body_applies(argmap, unknown):
                request_ = req if req is not None else self.get_default_request()
                if is_json_request(request_):
                    loaded = argmap.plain_body(request_.get_data(cache=True))
                    if loaded is not None:
                        return loaded
        return super().parse(argmap, req, location=location, unknown=unknown, validate=validate, **kwargs)

    def _plain_body_applies(self, schema: Schema, unknown) -> bool:
        # A schema's plain_body(bytes) mirrors its declarations with unknown fields refused (RAISE), so it
        # answers only where webargs leaves unknown fields to the schema and the schema refuses them.
        return (getattr(schema, "plain_body", None) is not None and schema.unknown == RAISE
                and self._unknown_for("json", unknown) in (None, RAISE))

    def _unknown_for(self, location: str, unknown):
        # webargs' precedence (Parser._process_location_data): the call's setting, the parser's, then its
        # default for the location (EXCLUDE for query strings); the loader only answers for EXCLUDE.
        if unknown != _UNKNOWN_DEFAULT_PARAM:
            return unknown
        if self.unknown != _UNKNOWN_DEFAULT_PARAM:
            return self.unknown
        return self.DEFAULT_UNKNOWN_BY_LOCATION.get(location)

    def _query_loader(self, schema: Schema) -> PlainQueryLoader:
        # Keyed by the schema instance each view declares once (kept here, so its id is never reused).
        entry = self._query_loaders.get(id(schema))
        if entry is None:
            entry = self._query_loaders[id(schema)] = (schema, PlainQueryLoader(schema))
        return entry[1]


class PlainQueryBlueprint(Blueprint):
    """A flask-smorest Blueprint whose query arguments are parsed by PlainQueryParser."""

    ARGUMENTS_PARSER = PlainQueryParser()


class SegrecApi(Api):
    """flask-smorest's Api documenting the error envelope the services really send for every error status."""

    ERROR_SCHEMA = ErrorEnvelopeSchema


def create_api(app: Flask, title: str) -> Api:
    """flask-smorest Api with the OpenAPI document at /openapi.json and a page at /docs."""
    app.config.setdefault("API_TITLE", title)
    app.config.setdefault("API_VERSION", "v1")
    # 3.1: a nullable nested object is documented as "that object or null" (3.0 output allowed any object).
    app.config.setdefault("OPENAPI_VERSION", "3.1.0")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    # The page and Swagger UI's scripts are both served by the app (register_swagger_ui_files).
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", SWAGGER_UI_FILES_URL)
    api = SegrecApi(app, spec_kwargs={"info": {"description": f"segrec {title}"}, "extra_plugins": [OperationIdPlugin()]})
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    register_swagger_ui_files(app)
    return api


class SegrecFlask(Flask):
    """Flask that remembers, per function, whether it is a coroutine function.

    Flask asks `inspect.iscoroutinefunction` for every hook, view and teardown of every request (eleven
    times a storefront request, about 5 % of its time in the profile); the answer never changes for a
    function, so it is looked up once. Bound methods (a MethodView's handler is bound afresh per request)
    are remembered by their function.
    """

    # Functions made per request (after_this_request closures) would grow the memo: it is emptied past this.
    SYNC_MEMO_LIMIT = 4096

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._coroutine_functions: dict = {}

    def ensure_sync(self, func):
        """The function as is when it is synchronous, else wrapped to run to completion (as Flask does)."""
        memo = self._coroutine_functions
        key = getattr(func, "__func__", func)
        is_coroutine = memo.get(key)
        if is_coroutine is None:
            if len(memo) >= self.SYNC_MEMO_LIMIT:
                memo.clear()
            is_coroutine = memo[key] = iscoroutinefunction(func)
        return self.async_to_sync(func) if is_coroutine else func


def register_request_id(app: Flask) -> None:
    """Take the caller's X-Request-ID (or make one), keep it for logs and errors, and send it back."""

    @app.before_request
    def assign_request_id():
        # One context lookup each for the request and g: every attribute read through Flask's proxies
        # costs about a microsecond, and these hooks run for every request.
        offered = request._get_current_object().environ.get(REQUEST_ID_ENVIRON)
        g._get_current_object().request_id = (offered if offered and ACCEPTABLE_REQUEST_ID.match(offered)
                                              else random_id())

    @app.after_request
    def return_request_id(response):
        request_id = getattr(g._get_current_object(), "request_id", None)
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response


def register_probes(app: Flask, service: str, model_check) -> None:
    """/healthz (alive), /readyz (database, Redis and a published model) and /metrics."""

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "service": service})

    @app.get("/readyz")
    def readyz():
        checks = {"database": _check(lambda: db.engine.connect().execute(text("SELECT 1")).close())}
        checks["redis"] = _check(redis_store.client.ping)
        checks["model"] = _check(model_check)
        ready = all(value == "ok" for value in checks.values())
        response = jsonify({"status": "ready" if ready else "not_ready", "checks": checks})
        response.status_code = 200 if ready else 503
        return response

    @app.get("/metrics")
    def metrics():
        registry = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        payload = generate_latest(registry) if registry is not None else generate_latest()
        return Response(payload, mimetype=CONTENT_TYPE_LATEST)


def _check(probe) -> str:
    try:
        result = probe()
    except Exception as error:  # a probe reports failures, it never raises them
        return f"failed: {type(error).__name__}: {error}"[:200]
    if result is False:
        return "failed: not present"
    return "ok"


def register_request_metrics(app: Flask, service: str) -> None:
    """Time every request into a Prometheus histogram."""

    @app.before_request
    def start_timer():
        g._get_current_object().request_started = time.perf_counter()

    @app.after_request
    def observe(response):
        started = getattr(g._get_current_object(), "request_started", None)
        if started is not None:
            status_class = f"{response.status_code // 100}xx"
            REQUEST_SECONDS_BY_ENDPOINT(service, request._get_current_object().endpoint or "unknown",
                                        status_class).observe(time.perf_counter() - started)
        return response


# ---- batches -------------------------------------------------------------------------------


class RecordBatch:
    """A batch split into the records that validated (with their index) and those that did not."""

    def __init__(self, accepted: list[tuple[int, dict]], rejected: list[tuple[int, object, dict]]) -> None:
        self.accepted = accepted
        self.rejected = rejected


class TolerantList(fields.List):
    """A list whose invalid items are set aside with their errors instead of failing the whole list.

    `limit_setting` names the configuration value that caps its length (past it: 413).
    """

    def __init__(self, *args, limit_setting: str = "MAX_BATCH_RECORDS", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limit_setting = limit_setting

    def _deserialize(self, value, attr, data, **kwargs) -> RecordBatch:
        if not utils.is_collection(value):
            raise self.make_error("invalid")
        limit = current_app.config[self.limit_setting]
        if len(value) > limit:
            raise BatchTooLarge(
                f"a batch takes at most {limit} records; this one has {len(value)}",
                {"max_records": limit, "records": len(value)},
            )
        accepted: list[tuple[int, dict]] = []
        rejected: list[tuple[int, object, dict]] = []
        for index, item in enumerate(value):
            try:
                accepted.append((index, self.load_record(item, **kwargs)))
            except ValidationError as error:
                # A record that is not an object (null, a number) has a list of messages, not a dict.
                messages = error.messages if isinstance(error.messages, dict) else {"_record": error.messages}
                rejected.append((index, item, messages))
        return RecordBatch(accepted, rejected)

    def load_record(self, item, **kwargs):
        """One record through the inner field (subclasses may check the common case faster first)."""
        return self.inner.deserialize(item, **kwargs)


class BatchRequestMixin:
    """Accept a batch as a bare JSON array or as {"records": [...]}."""

    @pre_load
    def wrap_bare_list(self, data, **kwargs):
        if isinstance(data, list):
            return {"records": data}
        return data


def record_id(record: object, id_field: str) -> str | None:
    """The id a client sent for a record, for the rejection report, even when the record is invalid."""
    if isinstance(record, dict):
        value = record.get(id_field)
        if value is not None:
            # A lone surrogate cannot be written as UTF-8 JSON: echo it escaped ("\\ud800").
            return str(value)[:64].encode("utf-8", "backslashreplace").decode("utf-8")
    return None


def json_response(payload: dict, status: int = 200) -> Response:
    """A JSON response built directly, skipping schema serialization on hot read paths.

    flask-smorest passes a Response through untouched, so the view keeps its @blp.response schema for
    the OpenAPI document while the storefront's hottest endpoints avoid marshmallow's per-field dump.
    The payload must already be plain JSON types, shaped as that schema says (a test checks it).
    """
    return Response(orjson.dumps(payload), status=status, mimetype="application/json")


# Overlapping concurrent batches can collide on a new id more than once in a row; each retry sees more of the
# other requests' rows, so a few attempts always resolve it.
BATCH_WRITE_ATTEMPTS = 6


def run_batch(batch: RecordBatch, id_field: str, write) -> dict:
    """Write a batch's valid records with `write(session, records)` and merge in the invalid ones.

    A concurrent request may insert the same new id between our read and our write; the unique key
    then fails the transaction, and a retry sees the other request's rows and treats them as known.
    """
    for attempt in range(BATCH_WRITE_ATTEMPTS):
        try:
            with db.session() as session:
                outcome = write(session, batch.accepted) if batch.accepted else None
            break
        except IntegrityError:
            if attempt == BATCH_WRITE_ATTEMPTS - 1:
                raise
            log.info("batch write collided with a concurrent batch (attempt %d); retrying", attempt + 1)
            time.sleep(0.01 * (attempt + 1))
    if outcome is None:
        outcome = BatchOutcome()
    for index, record, errors in batch.rejected:
        outcome.reject(index, record_id(record, id_field), errors)
    return outcome.as_dict()


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON with orjson underneath: request bodies and answers are parsed and written several
    times faster, which the storefront's cart calls feel. Types orjson does not know (Decimal, ...)
    fall back to Flask's own conversion; keys keep their insertion order."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, default=self.default, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)


def register_config(app: Flask, overrides: dict | None) -> None:
    """Load defaults, environment and the caller's overrides into app.config."""
    app.config.update(load_config(overrides))
    if not app.config["REDIS_URL"]:
        app.config["REDIS_URL"] = DEFAULT_REDIS_URL
    app.json = OrjsonProvider(app)
    hops = int(app.config["TRUSTED_PROXY_HOPS"])
    if hops > 0:
        # Behind nginx the peer is the proxy: the client's address (for the failed-auth budget) is in X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    register_request_limits(app)


def register_request_limits(app: Flask) -> None:
    """414 / 431 in the JSON envelope for a request line or header fields over the configured limits."""

    @app.before_request
    def check_request_size():
        config = app.config
        this_request = request._get_current_object()
        environ = this_request.environ
        request_line = environ.get("RAW_URI") or this_request.full_path
        if len(request_line) > int(config["MAX_REQUEST_LINE"]):
            return error_response(414, "uri_too_long",
                                  f"the request line is longer than {config['MAX_REQUEST_LINE']} bytes",
                                  {"max_bytes": config["MAX_REQUEST_LINE"]})
        fields, longest = header_fields(environ)
        if fields > int(config["MAX_HEADER_FIELDS"]) or longest > int(config["MAX_HEADER_FIELD_BYTES"]):
            return error_response(431, "header_fields_too_large",
                                  "too many header fields or one too long",
                                  {"max_fields": config["MAX_HEADER_FIELDS"],
                                   "max_field_bytes": config["MAX_HEADER_FIELD_BYTES"]})
        return None


def header_fields(environ: dict) -> tuple[int, int]:
    """How many header fields a request has, and the bytes of its longest `Name: value` line.

    Read from the WSGI environ as werkzeug's EnvironHeaders reads it (HTTP_* keys, and the content type
    and length when set), without building the title-cased names: this runs for every request.
    """
    fields = 0
    longest = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue  # werkzeug reports these as the CONTENT_* keys
            name_length = len(key) - 5
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name_length = len(key)
        else:
            continue
        fields += 1
        longest = max(longest, name_length + len(value) + 2)
    return fields, longest


def register_extensions(app: Flask) -> None:
    """Bind the shared database and Redis holders to this app's configuration."""
    db.init_app(app)
    redis_store.init_app(app)
