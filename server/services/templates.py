"""Templates: named SubmitJobRequests and CreateBulkJobRequests per owner, and
the one merge that applies a template to a request (SubmitJob, CreateBulkJob
and schedule ticks alike).

A template is a whole request, checked as if it were sent when it is saved.
Its `request_id` is not kept (each submit from it is its own: a kept one
would make every later submit return the first job), nor is a `template`
(templates do not nest).

An owner has at most GENJOBS_MAX_TEMPLATES_PER_OWNER templates (a counter
taken with one conditional write, storage/schedules.py), each at most
GENJOBS_MAX_TEMPLATE_BYTES as stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from genjobs.server.model import clock
from genjobs.server.model.caller import Caller
from genjobs.server.model.errors import Code, FieldViolation, ServiceError, invalid
from genjobs.server.model.records import Origin, Params, Template
from genjobs.server.model.targets import NotifyTarget
from genjobs.server.services import validation
from genjobs.server.storage.schedules import TEMPLATES, ScheduleStore
from genjobs.v1 import bulk_pb2, jobs_pb2

# What a template (or a schedule) holds: the oneof field name and its message.
JOB, BULK_JOB = "job", "bulk_job"
KINDS: dict[str, type[Message]] = {
    JOB: jobs_pb2.SubmitJobRequest,
    BULK_JOB: bulk_pb2.CreateBulkJobRequest,
}
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
Request = TypeVar("Request", jobs_pb2.SubmitJobRequest, bulk_pb2.CreateBulkJobRequest)


def check_name(name: str, field: str = "name") -> list[FieldViolation]:
    """A violation unless `name` can name a template: 1 to 64 of A-Z a-z 0-9 . _ -."""
    if _NAME.fullmatch(name):
        return []
    return [FieldViolation(field, "a template name: 1 to 64 of A-Z a-z 0-9 . _ -")]


class RequestValues(Protocol):
    """How a request message reads as plain values: the API's conversion
    (server/api/convert.py), handed in by the wiring so that services need
    not know the API layer."""

    def mode_name(self, value: int) -> str:
        """A Mode number as its name without MODE_; "" for unspecified or unknown."""
        ...

    def params_of(self, params: jobs_pb2.GenerationParams) -> Params:
        """GenerationParams as the document stored in a job."""
        ...

    def notify_targets(
        self, request: jobs_pb2.SubmitJobRequest | bulk_pb2.CreateBulkJobRequest
    ) -> list[NotifyTarget]:
        """The notification targets a request asks for (its list and its shorthands)."""
        ...

    def priority_name(self, value: int) -> str:
        """A Priority number as its name without PRIORITY_ (unspecified: "NORMAL")."""
        ...

    def schedule_us(self, request: jobs_pb2.SubmitJobRequest | bulk_pb2.CreateBulkJobRequest) -> int:
        """A create request's schedule_time in epoch microseconds, 0 when unset (range checked)."""
        ...


def check_request(kind: str, request: Message, prefix: str, convert: RequestValues) -> list[FieldViolation]:
    """Everything wrong with a SubmitJobRequest (kind "job") or a
    CreateBulkJobRequest ("bulk_job") as if it were sent now, through the
    same checks as SubmitJob and CreateBulkJob (reading it with `convert`);
    fields named `prefix`.field."""
    if isinstance(request, jobs_pb2.SubmitJobRequest):
        bad = validation.check_submit(
            convert.mode_name(request.mode),
            convert.params_of(request.params),
            request.request_id,
            request.project,
            request.max_attempts,
        )
        bad += validation.check_notify(convert.notify_targets(request))
    else:
        assert isinstance(request, bulk_pb2.CreateBulkJobRequest)
        bad = validation.check_bulk(
            convert.mode_name(request.mode),
            [convert.params_of(item) for item in request.items],
            request.request_id,
            request.project,
            convert.notify_targets(request),
        )
    return [FieldViolation(f"{prefix}.{v.field}", v.description) for v in bad]


def merge(base: Message, overrides: Message) -> Message:
    """`base` with every field set in `overrides` replacing its own: messages
    field by field (params), a repeated or map field set in `overrides`
    replaces the base's whole (never appends), well-known types (Timestamp)
    as one value. "Set" is what protobuf lists: a non-default scalar, a
    non-empty repeated field, a present message."""
    merged = type(base)()
    merged.CopyFrom(base)
    for field, value in overrides.ListFields():
        mine: Any = getattr(merged, field.name)
        if field.is_repeated:
            merged.ClearField(field.name)
            mine = getattr(merged, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                mine.update(value)
            else:
                mine.extend(value)
        elif field.message_type is not None and not field.message_type.full_name.startswith(
            "google.protobuf."
        ):
            mine.CopyFrom(merge(mine, value))
        elif field.message_type is not None:
            mine.CopyFrom(value)
        else:
            setattr(merged, field.name, value)
    return merged


def stored_request(kind: str, raw: bytes) -> Message:
    """The request a template or schedule keeps: of `kind`, serialized as `raw`."""
    request = KINDS[kind]()
    request.ParseFromString(raw)
    return request


class Templates:
    """The TemplateService's domain, and the resolution of `template` on submits."""

    def __init__(
        self,
        store: ScheduleStore,
        convert: RequestValues,
        max_per_owner: int = 200,
        max_bytes: int = 1_048_576,
    ) -> None:
        self.store = store
        self.convert = convert
        self.max_per_owner = max_per_owner
        self.max_bytes = max_bytes

    def _checked(self, name: str, kind: str, request: Message | None) -> bytes:
        """The request as stored, after every check; INVALID_ARGUMENT otherwise."""
        bad = check_name(name)
        if request is None:
            bad.append(FieldViolation("request", "exactly one of job or bulk_job is required"))
        else:
            request = _without(request, "request_id")
            if getattr(request, "template", ""):
                bad.append(FieldViolation(f"{kind}.template", "a template cannot name another template"))
            bad += check_request(kind, request, kind, self.convert)
        if bad or request is None:
            raise invalid(bad)
        raw = request.SerializeToString()
        if len(raw) > self.max_bytes:
            raise invalid(
                [
                    FieldViolation(
                        kind,
                        f"{len(raw)} bytes; a template holds at most {self.max_bytes} "
                        "(GENJOBS_MAX_TEMPLATE_BYTES)",
                    )
                ]
            )
        return raw

    def create(self, caller: Caller, name: str, kind: str, request: Message | None) -> Template:
        """Save a new template; ALREADY_EXISTS if the caller has one of that name."""
        raw = self._checked(name, kind, request)
        now = clock.now_us()
        template = Template(caller.user, name, kind, raw, created_us=now, updated_us=now)
        self.store.take_place(TEMPLATES, caller.user, self.max_per_owner, "GENJOBS_MAX_TEMPLATES_PER_OWNER")
        stored = False
        try:
            self.store.insert_template(template)
            stored = True
            return template
        finally:
            if not stored:  # a taken name (ALREADY_EXISTS): give the place back
                self.store.give_place(TEMPLATES, caller.user)

    def get(self, caller: Caller, name: str) -> Template:
        """One of the caller's templates."""
        bad = check_name(name)
        if bad:
            raise invalid(bad)
        return self.store.get_template(caller.user, name)

    def list_templates(self, caller: Caller, page_size: int, token: str) -> tuple[list[Template], str]:
        """A page of the caller's templates, by name."""
        size, bad = validation.page_size(page_size)
        if bad:
            raise invalid(bad)
        return self.store.list_templates(caller.user, size, token)

    def update(self, caller: Caller, name: str, kind: str, request: Message | None) -> Template:
        """Replace a template's request (its kind may change); NOT_FOUND if none."""
        raw = self._checked(name, kind, request)
        return self.store.replace_template(caller.user, name, kind, raw)

    def delete(self, caller: Caller, name: str) -> None:
        """Remove one of the caller's templates."""
        bad = check_name(name)
        if bad:
            raise invalid(bad)
        self.store.delete_template(caller.user, name)

    async def apply(self, owner: str, request: Request, origin: Origin) -> tuple[Request, Origin]:
        """`resolve` from the event loop for SubmitJob and CreateBulkJob: the
        request to run, and `origin` with the template's name added."""
        if not request.template:
            return request, origin
        request, named = await asyncio.to_thread(self.resolve, owner, request)
        return request, dataclasses.replace(origin, template=named)

    def resolve(self, owner: str, request: Request) -> tuple[Request, str]:
        """The request to run: `request` as it is when it names no template,
        else the owner's template of that name (as it is now) with every field
        set in `request` over it. Also the template's name the job or bulk job
        carries ("" for none). NOT_FOUND for an unknown
        name, FAILED_PRECONDITION for a template of the other kind."""
        name = request.template
        if not name:
            return request, ""
        bad = check_name(name, "template")
        if bad:
            raise invalid(bad)
        template = self.store.get_template(owner, name)
        kind = JOB if isinstance(request, jobs_pb2.SubmitJobRequest) else BULK_JOB
        if template.kind != kind:
            wanted = "SubmitJob" if template.kind == JOB else "CreateBulkJob"
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "TEMPLATE_KIND_MISMATCH",
                f"template {name!r} holds a {template.kind.replace('_', ' ')} request: use it with {wanted}",
                metadata={"name": name, "kind": template.kind},
            )
        merged = merge(stored_request(template.kind, template.request), request)
        merged.ClearField("template")
        return merged, name  # type: ignore[return-value]  # the same kind as `request`


def _without(request: Message, field: str) -> Message:
    """A copy of `request` with `field` cleared."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(field)
    return copy
