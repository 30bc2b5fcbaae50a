"""The generic transcoder: HTTP routes read from the protos' google.api.http
annotations, and requests and responses mapped by protobuf's JSON mapping.

Nothing here names an RPC: a method annotated in a .proto is served over
HTTP as soon as its servicer implements it.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from genjobs.server.api.http.errors import bad_request

# Resuming a stream: the Last-Event-ID header goes into this request field,
# and a streamed message's id (the SSE `id:`) is this field of it.
RESUME_FIELD = "after_sequence"
SEQUENCE_FIELD = "sequence"
TYPE_FIELD = "type"

# Well-known message types that a query parameter can carry as one string.
SCALAR_MESSAGES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    *(
        f"google.protobuf.{t}Value"
        for t in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
    ),
}
_VARIABLE = re.compile(r"\{([A-Za-z_][\w.]*)(?:=([^}]*))?\}")
_VERB = re.compile(r":([A-Za-z_][\w]*)$")
# A \u escape of a UTF-16 surrogate (raw UTF-8 cannot hold one: json.loads refuses those bytes).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC: `GET /v1/jobs/{id}` -> genjobs.v1.JobService.GetJob."""

    verb: str  # the HTTP method, upper case
    template: str
    pattern: re.Pattern[str]  # matches the path without its custom verb
    custom: str  # the ":verb" suffix without the colon, or ""
    fields: tuple[str, ...]  # the request field (dotted path) of each variable, in order
    body: str  # "*": the whole body is the request; "": no body; else the field it fills
    response_body: str  # "": the whole response; else the field sent
    method: MethodDescriptor

    @property
    def streaming(self) -> bool:
        """Whether the RPC streams its responses (served as server-sent events)."""
        return bool(self.method.server_streaming)

    def match(self, path: str, custom: str) -> dict[str, str] | None:
        """The variables of `path` (already split from its custom verb), or None."""
        if custom != self.custom:
            return None
        found = self.pattern.match(path)
        return dict(zip(self.fields, found.groups(), strict=True)) if found else None


def routes(services: Iterable[ServiceDescriptor]) -> list[Route]:
    """Every binding (with additional_bindings) of every annotated method."""
    found = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                found.append(_route(method, binding))
    return found


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Route:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    elif kind is not None:
        verb, template = kind.upper(), getattr(rule, kind)
    else:
        raise ValueError(f"{method.full_name}: google.api.http rule without a pattern")
    path, custom = split_custom(template)
    regex, fields, position = "", [], 0
    for variable in _VARIABLE.finditer(path):
        regex += re.escape(path[position : variable.start()])
        fields.append(variable.group(1))
        regex += f"({_segments(variable.group(2) or '*')})"
        position = variable.end()
    regex += re.escape(path[position:])
    return Route(
        verb=verb,
        template=template,
        pattern=re.compile(f"^{regex}$"),
        custom=custom,
        fields=tuple(fields),
        body=rule.body,
        response_body=rule.response_body,
        method=method,
    )


def _segments(pattern: str) -> str:
    """The regex of a variable's pattern: `*` is one segment, `**` any number."""
    return "/".join(
        "[^/]+" if part == "*" else ".+" if part == "**" else re.escape(part) for part in pattern.split("/")
    )


def split_custom(path: str) -> tuple[str, str]:
    """`/v1/jobs/x:cancel` -> (`/v1/jobs/x`, `cancel`); a path without a verb -> (path, "")."""
    found = _VERB.search(path.rsplit("/", 1)[-1])
    if found is None:
        return path, ""
    return path[: -len(found.group(0))], found.group(1)


def build_request(
    route: Route,
    variables: dict[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
    last_event_id: str | None = None,
) -> Message:
    """The request message of `route` from the path variables, query
    parameters and JSON body; INVALID_ARGUMENT for anything it cannot read."""
    descriptor = route.method.input_type
    data: dict[str, Any] = {}
    if route.body:
        content = _json_body(body)
        if route.body == "*":
            data = content
        else:
            _assign(descriptor, data, route.body, content)
    for name, values in _grouped(query).items():
        field = _query_field(descriptor, name)
        value: Any = [_query_value(field, v) for v in values]
        if not field.is_repeated:
            if len(values) > 1:
                raise bad_request("INVALID_QUERY_PARAMETER", name, "given more than once")
            value = value[0]
        _assign(descriptor, data, name, value)
    for name, value in variables.items():
        _assign(descriptor, data, name, value)
    if last_event_id is not None and RESUME_FIELD in descriptor.fields_by_name:
        if not last_event_id.strip().isdigit():
            raise bad_request("INVALID_LAST_EVENT_ID", "Last-Event-ID", "must be an event sequence number")
        _assign(descriptor, data, RESUME_FIELD, last_event_id.strip())
    request = message_factory.GetMessageClass(descriptor)()
    try:
        json_format.ParseDict(data, request)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise bad_request("INVALID_FIELD", descriptor.name, str(exc)) from None
    return request


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        content = json.loads(body)
        if _SURROGATE_ESCAPE.search(body):
            # json.loads lets "\ud800" through as a lone surrogate, which no
            # protobuf string (nor UTF-8) can hold: refused here, not deep in a handler.
            json.dumps(content, ensure_ascii=False).encode()
    except RecursionError:  # arrays or objects nested about a thousand deep
        raise bad_request("INVALID_JSON", "body", "nested too deeply") from None
    except UnicodeEncodeError:
        raise bad_request("INVALID_JSON", "body", "a \\u escape is a lone surrogate") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request("INVALID_JSON", "body", f"not valid JSON: {exc}") from None
    if not isinstance(content, dict):
        raise bad_request("INVALID_JSON", "body", "must be a JSON object")
    return content


def _grouped(query: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    return grouped


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its JSON (lowerCamelCase) name."""
    field = descriptor.fields_by_name.get(name)
    if field is not None:
        return field
    return next((f for f in descriptor.fields if f.json_name == name), None)


def _query_field(descriptor: Descriptor, dotted: str) -> FieldDescriptor:
    """The field a query parameter names (`pageSize`, `params.topic`), if it can carry one."""
    parts = dotted.split(".")
    field: FieldDescriptor | None = None
    for i, part in enumerate(parts):
        field = _field(descriptor, part)
        if field is None:
            raise bad_request("UNKNOWN_QUERY_PARAMETER", dotted, f"{descriptor.name} has no field {part!r}")
        if i < len(parts) - 1:
            if field.message_type is None or field.is_repeated:
                raise bad_request("INVALID_QUERY_PARAMETER", dotted, f"{part!r} is not a message")
            descriptor = field.message_type
    assert field is not None
    if field.message_type is not None and field.message_type.full_name not in SCALAR_MESSAGES:
        raise bad_request("INVALID_QUERY_PARAMETER", dotted, "a message or map cannot be a query parameter")
    return field


def _query_value(field: FieldDescriptor, value: str) -> Any:
    """A query string as the JSON value ParseDict expects: booleans as booleans;
    numbers, enum names and RFC 3339 timestamps stay strings (the JSON mapping reads those)."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
    return value


def _assign(descriptor: Descriptor, data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set the field at `dotted` in the JSON dict, replacing it under either spelling."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = _field(descriptor, part)
        if field is None:  # an annotation naming a field the request lacks
            raise ValueError(f"{descriptor.full_name} has no field {part!r}")
        for spelling in {field.name, field.json_name} - {part}:
            if spelling in data:  # the other spelling: one key per field, contents kept
                data.setdefault(part, data.pop(spelling))
        if i == len(parts) - 1:
            data[part] = value
            return
        nested = data.get(part)
        if not isinstance(nested, dict):
            nested = data[part] = {}
        data = nested
        if field.message_type is None:
            raise ValueError(f"{descriptor.full_name}.{part} is not a message")
        descriptor = field.message_type


class FrameCache:
    """JSON text of recently sent messages by identity: a thousand streams of one
    job receive the same message object, converted once."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._frames: OrderedDict[int, tuple[Message, str]] = OrderedDict()

    def json(self, message: Message) -> str:
        """`message` in protobuf's JSON mapping (lowerCamelCase), compact."""
        key = id(message)
        hit = self._frames.get(key)
        if hit is not None and hit[0] is message:
            return hit[1]
        text = to_json(message)
        self._frames[key] = (message, text)  # holding the message keeps its id unique
        if len(self._frames) > self._size:
            self._frames.popitem(last=False)
        return text


def to_json(message: Message, field: str = "") -> str:
    """`message` (or its `field`, for a response_body) as compact JSON text."""
    data: Any = json_format.MessageToDict(message)
    if field:
        data = data.get(message.DESCRIPTOR.fields_by_name[field].json_name)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def is_heartbeat(message: Message) -> bool:
    """Whether a stream message is a heartbeat: its `type` is the enum's *_HEARTBEAT."""
    field = message.DESCRIPTOR.fields_by_name.get(TYPE_FIELD)
    if field is None or field.enum_type is None:
        return False
    value = field.enum_type.values_by_number.get(getattr(message, TYPE_FIELD))
    return value is not None and value.name.endswith("_HEARTBEAT")


def sse_frame(message: Message, text: str) -> str:
    """One server-sent event, `id: <sequence>` then the message's JSON. A
    heartbeat (it repeats the last sequence sent) is a comment: it keeps
    proxies and the client's liveness check awake without being an event."""
    if is_heartbeat(message):
        return f": {text}\n\n"
    has_sequence = SEQUENCE_FIELD in message.DESCRIPTOR.fields_by_name
    sequence = getattr(message, SEQUENCE_FIELD) if has_sequence else 0
    head = f"id: {sequence}\n" if sequence else ""
    return f"{head}data: {text}\n\n"
