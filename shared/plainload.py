"""A fast path for marshmallow schemas on hot endpoints: plainly valid records loaded without the machinery.

marshmallow's per-field load (error stores, hooks, per-field validator calls) was most of a cart or a
feedback request in the profile. `PlainLoader(schema)` reads the schema's own declarations once (field
types, required / load_default / allow_none, Length, Range and OneOf validators, the id rules, nested
schemas and lists, and the date-time rules of ShopDateTime) and checks a record against them with plain
Python. It answers exactly what `schema.load` would for a record it accepts, and None for anything else:
the caller then loads that record through the schema, so every error, message and coercion stays the
schema's. The rules live in the schema alone; nothing here restates them.

A schema with anything this does not understand (another field type, another validator, load hooks other
than @validates_schema) is never taken on: its loader always answers None.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated

import msgspec
from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA
from webargs.fields import DelimitedList

from shared.limits import MAX_ID_LENGTH, id_problem
from shared.schemas import DocumentedLength, DocumentedPattern, ShopDateTime, check_id, check_no_comma, time_rules

# The timestamps read here; any other form goes through the schema.
PLAIN_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$")


class _Defer(Exception):
    """The record is not plainly valid: the schema decides."""


class _Unsupported(Exception):
    """The schema declares something this loader does not read."""


class PlainContext:
    """Per-load values computed once: the time rules and the latest acceptable time per days ahead."""

    __slots__ = ("rules", "_latest")

    def __init__(self) -> None:
        self.rules = None
        self._latest: dict[int, datetime] = {}

    def latest(self, days_ahead: int) -> datetime:
        if self.rules is None:
            self.rules = time_rules()
        if days_ahead not in self._latest:
            self._latest[days_ahead] = self.rules.latest(days_ahead)
        return self._latest[days_ahead]


def _valid_id(value: str) -> bool:
    return id_problem(value) is None


def _string_checks(field: fields.String) -> list:
    checks = []
    for validator in field.validators:
        if isinstance(validator, (DocumentedLength, DocumentedPattern)):
            continue  # documentation only: check_id is the rule
        if validator is check_id:
            checks.append(_valid_id)
        elif validator is check_no_comma:
            checks.append(lambda value: "," not in value)
        elif type(validator) is validate.Length and validator.equal is None:
            low, high = validator.min, validator.max
            checks.append(lambda value, low=low, high=high: (low is None or len(value) >= low)
                          and (high is None or len(value) <= high))
        elif type(validator) is validate.OneOf:
            choices = frozenset(validator.choices)
            checks.append(lambda value, choices=choices: value in choices)
        else:
            raise _Unsupported(f"validator {validator!r}")
    return checks


def _range_checks(field: fields.Field) -> list:
    checks = []
    for validator in field.validators:
        if type(validator) is not validate.Range:
            raise _Unsupported(f"validator {validator!r}")
        low, high, low_in, high_in = validator.min, validator.max, validator.min_inclusive, validator.max_inclusive
        checks.append(lambda value, low=low, high=high, low_in=low_in, high_in=high_in: (
            (low is None or (value >= low if low_in else value > low))
            and (high is None or (value <= high if high_in else value < high))))
    return checks


def _all_of(checks: list):
    """One predicate for several (the common single check is called directly)."""
    if not checks:
        return lambda _value: True
    if len(checks) == 1:
        return checks[0]
    return lambda value: all(check(value) for check in checks)


def _value_loader(field: fields.Field):
    """A function (value, context) -> loaded value for a present, non-null value; raises _Defer."""
    if type(field) is fields.String:
        check = _all_of(_string_checks(field))

        def load_string(value, _context):
            if type(value) is not str or not check(value):
                raise _Defer
            return value
        return load_string
    if type(field) is fields.Integer:
        check = _all_of(_range_checks(field))

        def load_integer(value, _context):
            if type(value) is not int or not check(value):
                raise _Defer
            return value
        return load_integer
    if type(field) is fields.Nested and isinstance(field.nested, (Schema, type)) and not field.many:
        record_loader = _record_loader(field.schema)
        return lambda value, context: record_loader(value, context)
    if isinstance(field, fields.List) and type(field) is fields.List:
        inner = _value_loader(field.inner)
        length = _list_length(field)

        def load_list(value, context):
            if type(value) is not list or not length(len(value)):
                raise _Defer
            return [_present(inner, item, field.inner, context) for item in value]
        return load_list
    if type(field) is ShopDateTime and not field.validators and field.format in (None, "iso", "iso8601"):
        days_ahead = field.days_ahead
        return lambda value, context: _plain_time(value, context, days_ahead)
    raise _Unsupported(f"field {type(field).__name__}")


def _plain_time(value, context: PlainContext, days_ahead: int) -> datetime:
    """What ShopDateTime(days_ahead=...) loads for a plainly valid ISO 8601 text; raises _Defer otherwise."""
    if type(value) is not str or not PLAIN_ISO_TIME.match(value):
        raise _Defer
    latest = context.latest(days_ahead)
    try:
        naive_utc = context.rules.to_naive_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):  # 30 February, year 9999 plus an offset...
        raise _Defer from None
    if not context.rules.min_date <= naive_utc <= latest:
        raise _Defer
    return naive_utc.replace(tzinfo=timezone.utc)


def _list_length(field: fields.List):
    bounds = [validator for validator in field.validators if type(validator) is validate.Length]
    if len(bounds) != len(field.validators) or any(bound.equal is not None for bound in bounds):
        raise _Unsupported("list validator")
    return lambda size: all((bound.min is None or size >= bound.min) and (bound.max is None or size <= bound.max)
                            for bound in bounds)


def _present(loader, value, field: fields.Field, context):
    if value is None:
        if not field.allow_none:
            raise _Defer
        return None
    return loader(value, context)


def _record_loader(schema: Schema):
    """A function (record, context) -> the loaded dict, for one schema; raises _Defer or _Unsupported."""
    hooks = schema._hooks
    if hooks[PRE_LOAD] or hooks[POST_LOAD] or hooks[VALIDATES] or schema.unknown != RAISE:
        raise _Unsupported("load hooks or unknown-field handling")
    plan = []
    for name, field in schema.fields.items():
        if field.dump_only:
            continue
        key = field.data_key or name
        default = field.load_default
        plan.append((key, name, field.allow_none, _value_loader(field), field.required, default))
    known = frozenset(key for key, *_rest in plan)
    validators = [getattr(schema, attribute) for attribute, _many, _kwargs in hooks[VALIDATES_SCHEMA]]

    def load_record(record, context):
        if type(record) is not dict or not record.keys() <= known:
            raise _Defer
        loaded = {}
        for key, name, allow_none, loader, required, default in plan:
            if key in record:
                value = record[key]
                if value is not None:
                    loaded[name] = loader(value, context)
                elif allow_none:
                    loaded[name] = None
                else:
                    raise _Defer
            elif required:
                raise _Defer
            elif default is not missing:
                loaded[name] = default() if callable(default) else default
        for validator in validators:
            try:
                validator(loaded, partial=None, many=False, unknown=None)
            except ValidationError:
                raise _Defer from None
        return loaded
    return load_record


class _DeclarationLoader:
    """A loader built from a schema's declarations: None for a schema it cannot read, and for any deferral."""

    def __init__(self, schema: Schema, build) -> None:
        try:
            self._load = build(schema)
        except _Unsupported:
            self._load = None

    @property
    def supported(self) -> bool:
        """False when the schema declares something this loader does not read (it then always defers)."""
        return self._load is not None

    def _plain(self, *arguments):
        """What the built loader answers, or None when it defers (or the schema is not supported)."""
        if self._load is None:
            return None
        try:
            return self._load(*arguments)
        except _Defer:
            return None


class PlainLoader(_DeclarationLoader):
    """`load(record)`: what `schema.load(record)` answers when the record is plainly valid, else None."""

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema, _record_loader)

    def load(self, record, context: PlainContext | None = None):
        """The loaded record, or None: load it through the schema instead."""
        return self._plain(record, context or PlainContext())

    def load_many(self, records) -> list:
        """Each record loaded, or None where the schema has to decide (one time context for the batch)."""
        context = PlainContext()
        return [self.load(record, context) for record in records]


# ---- query strings -------------------------------------------------------------------------------

# An integer as a query value the fast path reads: ASCII digits only (int() also takes "+5", " 5", "5_0"
# and other scripts' digits; those go through the schema), short enough never to meet int()'s digit limit.
PLAIN_DIGITS = re.compile(r"^[0-9]{1,18}$")


def _query_value_loader(field: fields.Field):
    """A function (text) -> loaded value for one query parameter's text; raises _Defer or _Unsupported."""
    if type(field) is fields.String:
        check = _all_of(_string_checks(field))

        def load_string(text):
            if not check(text):
                raise _Defer
            return text
        return load_string
    if type(field) is fields.Integer and not field.strict:
        check = _all_of(_range_checks(field))

        def load_integer(text):
            if not PLAIN_DIGITS.match(text):
                raise _Defer
            value = int(text)
            if not check(value):
                raise _Defer
            return value
        return load_integer
    if type(field) is DelimitedList and field.empty_value == "":
        inner = _query_value_loader(field.inner)
        length = _list_length(field)
        delimiter = field.delimiter

        def load_delimited(text):
            items = text.split(delimiter) if text else []
            if not length(len(items)):
                raise _Defer
            return [inner(item) for item in items]
        return load_delimited
    raise _Unsupported(f"query field {type(field).__name__}")


def _query_loader(schema: Schema):
    """A function (args) -> the loaded dict, for one schema read from a query string; raises _Defer."""
    hooks = schema._hooks
    if any(hooks[hook] for hook in (PRE_LOAD, POST_LOAD, VALIDATES, VALIDATES_SCHEMA)) or schema.many or schema.partial:
        raise _Unsupported("load hooks, many or partial")
    plan = []
    for name, field in schema.load_fields.items():
        default = field.load_default
        plan.append((field.data_key or name, name, _query_value_loader(field), field.required, default))

    def load_query(args):
        loaded = {}
        for key, name, loader, required, default in plan:
            # The first value of a repeated parameter, as webargs reads a field that is not `is_multiple`
            # (getlist: MultiDict.get raises and catches a BadRequestKeyError for every absent parameter).
            values = args.getlist(key)
            if values:
                loaded[name] = loader(values[0])
            elif required:
                raise _Defer
            elif default is not missing:
                loaded[name] = default() if callable(default) else default
        return loaded
    return load_query


class PlainQueryLoader(_DeclarationLoader):
    """`load(args)`: what webargs answers for a query string (unknown parameters excluded) when plainly valid.

    Reads String (with the validators PlainLoader reads), Integer (not strict; ASCII digits within its
    Range) and DelimitedList of those; None for anything else, and the caller parses through webargs.
    """

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema, _query_loader)

    def load(self, args):
        """The loaded arguments from a werkzeug MultiDict of query parameters, or None: parse them through webargs."""
        return self._plain(args)


# ---- JSON bodies ---------------------------------------------------------------------------------
# A hot endpoint may declare msgspec Structs that mirror its schema (next to the schema, with a test that
# both load the same): msgspec decodes and checks a body in C, and a body it refuses goes through the schema.

# An id in such a Struct: 1 to MAX_ID_LENGTH characters. check_id's other rules (no "/", no control
# character, no lone surrogate) hold for every string of a body decode_plain takes on (see below): a
# pattern constraint instead cost msgspec a Python regex call per id, half of a feedback body's decoding.
PlainId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]

# A decoded JSON string can hold "/", a control character or a lone surrogate only when the body holds
# "/", a backslash (an escape can spell any of them), DEL, or 0xc2 (the UTF-8 lead byte of the C1
# controls U+0080-U+009F): msgspec refuses raw C0 controls inside strings and bytes that are not UTF-8
# (raw surrogates). A body holding any of these four bytes goes through the schema.
_UNPLAIN_BYTES = (b"/", b"\\", b"\x7f", b"\xc2")


def decode_plain(decoder: msgspec.json.Decoder, body: bytes):
    """The body decoded into the decoder's typed records, or None: the schema decides."""
    if any(byte in body for byte in _UNPLAIN_BYTES):
        return None
    try:
        return decoder.decode(body)
    except msgspec.DecodeError:  # malformed JSON, or a value the Structs do not plainly accept
        return None


_UNREAD = object()


class PlainTimes:
    """The ShopDateTime texts of one request body, each read once (a batch's events often share a time)."""

    __slots__ = ("_context", "_days_ahead", "_loaded")

    def __init__(self, days_ahead: int = 0) -> None:
        self._context = PlainContext()
        self._days_ahead = days_ahead
        self._loaded: dict[str, datetime | None] = {}

    def load(self, text: str) -> datetime | None:
        """What ShopDateTime(days_ahead=...) loads from the text, or None: the schema decides."""
        loaded = self._loaded.get(text, _UNREAD)
        if loaded is _UNREAD:
            try:
                loaded = _plain_time(text, self._context, self._days_ahead)
            except _Defer:
                loaded = None
            self._loaded[text] = loaded
        return loaded
