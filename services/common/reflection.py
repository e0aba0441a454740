"""A generic gRPC client through server reflection (``lianxin call``): JSON in, JSON out, no generated stubs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.errors import InvalidArgument, NotFound


class ReflectionClient:
    """Learns a server's services from its reflection service and calls any unary or server-streaming method."""

    def __init__(self, address: str, *, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._channel = grpc.insecure_channel(address)
        self._database = ProtoReflectionDescriptorDatabase(self._channel)
        self._pool = descriptor_pool.DescriptorPool(self._database)
        self._address = address
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ReflectionClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def service_names(self) -> list[str]:
        return sorted(self._database.get_services())

    def method_names(self, service: str) -> list[str]:
        return [method.name for method in self._service(service).methods]

    def _service(self, name: str) -> ServiceDescriptor:
        try:
            return self._pool.FindServiceByName(name)
        except KeyError:
            raise NotFound("service", f"{name} at {self._address}") from None

    def _method(self, full_method: str) -> MethodDescriptor:
        service_name, _, method_name = full_method.rpartition("/")
        if not service_name or not method_name:
            example = "lianxin.intake.v1.IntakeService/SubmitCase"
            raise InvalidArgument("method", f"must be Service/Method, e.g. {example}; got {full_method!r}")
        method = self._service(service_name).methods_by_name.get(method_name)
        if method is None:
            raise NotFound("method", f"{method_name} of {service_name}")
        if method.client_streaming:
            raise InvalidArgument("method", f"{full_method} streams requests; lianxin call sends one request")
        return method

    def call(self, full_method: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The reply (or each streamed reply) as proto3 JSON, field names as in the .proto file."""
        method = self._method(full_method)
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        try:
            request = json_format.ParseDict(body, request_class())
        except json_format.ParseError as error:
            raise InvalidArgument("body", str(error)) from None
        path = f"/{method.containing_service.full_name}/{method.name}"
        options = {
            "request_serializer": request_class.SerializeToString,
            "response_deserializer": reply_class.FromString,
        }
        if method.server_streaming:
            stream = self._channel.unary_stream(path, **options)
            replies = stream(request, timeout=self._timeout, metadata=self._metadata)
        else:
            unary = self._channel.unary_unary(path, **options)
            replies = iter([unary(request, timeout=self._timeout, metadata=self._metadata)])
        for reply in replies:
            yield json_format.MessageToDict(reply, preserving_proto_field_name=True)
