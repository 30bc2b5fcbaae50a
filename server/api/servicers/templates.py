"""TemplateService: protobuf in, a `Templates` call, protobuf out."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from genjobs.server.api import convert
from genjobs.server.api.servicers.common import rpc
from genjobs.server.model.caller import current_caller
from genjobs.server.services.templates import Templates
from genjobs.v1 import templates_pb2, templates_pb2_grpc


def _request(
    request: templates_pb2.CreateTemplateRequest | templates_pb2.UpdateTemplateRequest,
) -> tuple[str, Message | None]:
    """(kind, the request it holds), or ("", None) when it holds none."""
    kind = request.WhichOneof("request") or ""
    return kind, getattr(request, kind) if kind else None


class TemplateServicer(templates_pb2_grpc.TemplateServiceServicer):
    """The TemplateService RPCs."""

    def __init__(self, templates: Templates) -> None:
        self.templates = templates

    @rpc
    async def CreateTemplate(
        self, request: templates_pb2.CreateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> templates_pb2.Template:
        kind, held = _request(request)
        doc = await asyncio.to_thread(self.templates.create, current_caller(), request.name, kind, held)
        return convert.template(doc)

    @rpc
    async def GetTemplate(
        self, request: templates_pb2.GetTemplateRequest, context: grpc.aio.ServicerContext
    ) -> templates_pb2.Template:
        return convert.template(await asyncio.to_thread(self.templates.get, current_caller(), request.name))

    @rpc
    async def ListTemplates(
        self, request: templates_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> templates_pb2.ListTemplatesResponse:
        docs, token = await asyncio.to_thread(
            self.templates.list_templates, current_caller(), request.page_size, request.page_token
        )
        return templates_pb2.ListTemplatesResponse(
            templates=[convert.template(d) for d in docs], next_page_token=token
        )

    @rpc
    async def UpdateTemplate(
        self, request: templates_pb2.UpdateTemplateRequest, context: grpc.aio.ServicerContext
    ) -> templates_pb2.Template:
        kind, held = _request(request)
        doc = await asyncio.to_thread(self.templates.update, current_caller(), request.name, kind, held)
        return convert.template(doc)

    @rpc
    async def DeleteTemplate(
        self, request: templates_pb2.DeleteTemplateRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await asyncio.to_thread(self.templates.delete, current_caller(), request.name)
        return empty_pb2.Empty()
