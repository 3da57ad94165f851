"""Open Inference Protocol v2 over gRPC: Triton's ``inference`` messages, and calls to and from them (pure).

The message classes are built at import time from a file descriptor written here, with the
package, message and field names and the field numbers of Triton's ``grpc_service.proto`` (and
the part of ``model_config.proto`` that ``ModelConfig`` answers need), so ``tritonclient.grpc``
and any other client of that proto read and write them as their own; no generated code and no
protoc. Only the messages of the methods the gateway serves are here; a client's fields that are
not are kept as unknown fields and ignored. The classes live in a pool of their own, so they
never clash with a client's generated ones in the same process.

An infer request becomes the document and binary data the REST transport reads
(:func:`~.oip.build_call`), so both check a call the same way; every problem is an
:class:`~.oip.OipError` naming the field or tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from ..functions import Function
from ..names import show
from .oip import InferCall, OipError

__all__ = [
    "FILE",
    "METHODS",
    "SERVICE",
    "config_response",
    "infer_document",
    "infer_response",
    "metadata_response",
    "parameter_value",
    "pb",
    "statistics_response",
]

SERVICE = "inference.GRPCInferenceService"
PACKAGE = "inference"

# Each field is "name=number:type": a scalar, or a message or enum of the package; "*" after the type
# repeats it, "map<Message>" is a map from strings, fields joined by "|" are a oneof (named in _ONEOFS).
# Numbers copied from Triton's grpc_service.proto and model_config.proto (tests compare them with
# tritonclient's generated descriptors).
_MESSAGES: dict[str, str] = {
    "ServerLiveRequest": "",
    "ServerLiveResponse": "live=1:bool",
    "ServerReadyRequest": "",
    "ServerReadyResponse": "ready=1:bool",
    "ModelReadyRequest": "name=1:string version=2:string",
    "ModelReadyResponse": "ready=1:bool",
    "ServerMetadataRequest": "",
    "ServerMetadataResponse": "name=1:string version=2:string extensions=3:string*",
    "ModelMetadataRequest": "name=1:string version=2:string",
    "ModelMetadataResponse": "name=1:string versions=2:string* platform=3:string "
    "inputs=4:ModelMetadataResponse.TensorMetadata* "
    "outputs=5:ModelMetadataResponse.TensorMetadata*",
    "ModelMetadataResponse.TensorMetadata": "name=1:string datatype=2:string shape=3:int64*",
    "InferParameter": "bool_param=1:bool|int64_param=2:int64|string_param=3:string|double_param=4:double"
    "|uint64_param=5:uint64",
    "InferTensorContents": "bool_contents=1:bool* int_contents=2:int32* int64_contents=3:int64* "
    "uint_contents=4:uint32* uint64_contents=5:uint64* fp32_contents=6:float* "
    "fp64_contents=7:double* bytes_contents=8:bytes*",
    "ModelInferRequest": "model_name=1:string model_version=2:string id=3:string parameters=4:map<InferParameter> "
    "inputs=5:ModelInferRequest.InferInputTensor* "
    "outputs=6:ModelInferRequest.InferRequestedOutputTensor* raw_input_contents=7:bytes*",
    "ModelInferRequest.InferInputTensor": "name=1:string datatype=2:string shape=3:int64* "
    "parameters=4:map<InferParameter> contents=5:InferTensorContents",
    "ModelInferRequest.InferRequestedOutputTensor": "name=1:string parameters=2:map<InferParameter>",
    "ModelInferResponse": "model_name=1:string model_version=2:string id=3:string parameters=4:map<InferParameter> "
    "outputs=5:ModelInferResponse.InferOutputTensor* raw_output_contents=6:bytes*",
    "ModelInferResponse.InferOutputTensor": "name=1:string datatype=2:string shape=3:int64* "
    "parameters=4:map<InferParameter> contents=5:InferTensorContents",
    "ModelConfigRequest": "name=1:string version=2:string",
    "ModelConfigResponse": "config=1:ModelConfig",
    "ModelConfig": "name=1:string platform=2:string backend=17:string version_policy=3:ModelVersionPolicy "
    "max_batch_size=4:int32 input=5:ModelInput* output=6:ModelOutput*",
    "ModelVersionPolicy": "latest=1:ModelVersionPolicy.Latest|all=2:ModelVersionPolicy.All"
    "|specific=3:ModelVersionPolicy.Specific",
    "ModelVersionPolicy.Latest": "num_versions=1:uint32",
    "ModelVersionPolicy.All": "",
    "ModelVersionPolicy.Specific": "versions=1:int64*",
    "ModelInput": "name=1:string data_type=2:DataType dims=4:int64*",
    "ModelOutput": "name=1:string data_type=2:DataType dims=3:int64*",
    "ModelStatisticsRequest": "name=1:string version=2:string",
    "ModelStatisticsResponse": "model_stats=1:ModelStatistics*",
    "ModelStatistics": "name=1:string version=2:string last_inference=3:uint64 inference_count=4:uint64 "
    "execution_count=5:uint64 inference_stats=6:InferStatistics batch_stats=7:InferBatchStatistics*",
    "InferStatistics": "success=1:StatisticDuration fail=2:StatisticDuration queue=3:StatisticDuration "
    "compute_input=4:StatisticDuration compute_infer=5:StatisticDuration "
    "compute_output=6:StatisticDuration cache_hit=7:StatisticDuration "
    "cache_miss=8:StatisticDuration",
    "InferBatchStatistics": "batch_size=1:uint64 compute_input=2:StatisticDuration compute_infer=3:StatisticDuration "
    "compute_output=4:StatisticDuration",
    "StatisticDuration": "count=1:uint64 ns=2:uint64",
    "RepositoryIndexRequest": "repository_name=1:string ready=2:bool",
    "RepositoryIndexResponse": "models=1:RepositoryIndexResponse.ModelIndex*",
    "RepositoryIndexResponse.ModelIndex": "name=1:string version=2:string state=3:string reason=4:string",
}
_ONEOFS = {"InferParameter": "parameter_choice", "ModelVersionPolicy": "policy_choice"}  # a message has one at most
_ENUMS = {
    "DataType": [
        "TYPE_INVALID",
        "TYPE_BOOL",
        "TYPE_UINT8",
        "TYPE_UINT16",
        "TYPE_UINT32",
        "TYPE_UINT64",
        "TYPE_INT8",
        "TYPE_INT16",
        "TYPE_INT32",
        "TYPE_INT64",
        "TYPE_FP16",
        "TYPE_FP32",
        "TYPE_FP64",
        "TYPE_STRING",
        "TYPE_BF16",
    ]
}
METHODS = {
    name: (name + "Request", name + "Response")
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
    )
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="dask_kaas/grpc_service.proto", package=PACKAGE, syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path in _MESSAGES:  # parents come before their nested messages
        parent, _, name = path.rpartition(".")
        protos[path] = (protos[parent].nested_type if parent else fdp.message_type).add(name=name)
    for path, spec in _MESSAGES.items():
        message = protos[path]
        for choice in spec.split():
            oneof = None
            if "|" in choice:
                oneof = len(message.oneof_decl)
                message.oneof_decl.add(name=_ONEOFS[path])
            for item in choice.split("|"):
                name, _, rest = item.partition("=")
                number, _, kind = rest.partition(":")
                field = message.field.add(name=name, number=int(number), label=F.LABEL_OPTIONAL)
                if oneof is not None:
                    field.oneof_index = oneof
                if kind.endswith("*"):
                    field.label, kind = F.LABEL_REPEATED, kind[:-1]
                if kind.startswith("map<"):
                    entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
                    entry.options.map_entry = True
                    entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
                    entry.field.add(
                        name="value",
                        number=2,
                        label=F.LABEL_OPTIONAL,
                        type=F.TYPE_MESSAGE,
                        type_name=f".{PACKAGE}.{kind[4:-1]}",
                    )
                    field.label, field.type, field.type_name = (
                        F.LABEL_REPEATED,
                        F.TYPE_MESSAGE,
                        f".{PACKAGE}.{path}.{entry.name}",
                    )
                elif kind in _ENUMS:
                    field.type, field.type_name = F.TYPE_ENUM, f".{PACKAGE}.{kind}"
                elif kind in _MESSAGES:
                    field.type, field.type_name = F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
                else:
                    field.type = getattr(F, "TYPE_" + kind.upper())
    for name, values in _ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for index, value in enumerate(values):
            enum.value.add(name=value, number=index)
    service = fdp.service.add(name=SERVICE.rpartition(".")[2])
    for name, (request, response) in METHODS.items():
        service.method.add(name=name, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return fdp


FILE = _file()
_pool = descriptor_pool.DescriptorPool()
_pool.Add(FILE)
#: the message classes by name, nested ones as attributes of their parents (``pb.ModelInferRequest.InferInputTensor``)
pb = SimpleNamespace(
    **{
        name: message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _MESSAGES
        if "." not in name
    }
)

# which typed contents field holds an input of each datatype (FP16 and BF16 have none: raw contents only)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(p) -> Any:
    """The plain Python value of an ``InferParameter`` (None when unset)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _parameters(params, where: str) -> dict[str, Any]:
    out = {key: parameter_value(value) for key, value in params.items()}
    if "tenant" in out:
        raise OipError(400, f"{where}: parameter 'tenant' is not accepted: the tenant is the bearer token's")
    return out


def infer_document(request) -> tuple[dict, bytes]:
    """A ``ModelInferRequest`` as the REST transport's JSON document and the binary data after it.

    Raw contents become inputs with ``binary_data_size``, typed ``contents`` become ``data``; the
    document then goes through :func:`~.oip.build_call` like a REST body.

    Raises
    ------
    OipError
        400 naming the tensor: raw contents that do not match the inputs one for one, typed
        contents in the wrong field, an input with no data, a ``tenant`` parameter anywhere.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise OipError(
            400,
            f"raw_input_contents holds {len(raw)} tensors, the request has {len(request.inputs)} "
            "inputs (with raw contents every input is raw, in order)",
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        where = f"input {show(tensor.name)}"
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": _parameters(tensor.parameters, where),
        }
        item["parameters"].pop("binary_data_size", None)  # a REST parameter; here the raw contents say it
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise OipError(400, f"{where}: both contents and raw_input_contents")
            item["parameters"]["binary_data_size"] = len(raw[i])
        elif not has_contents:
            raise OipError(400, f"{where}: no contents and no raw_input_contents")
        else:
            wanted = _CONTENTS.get(tensor.datatype)
            given = [f.name for f, _ in tensor.contents.ListFields()]
            if wanted is None or any(name != wanted for name in given):
                got = f", got contents.{', contents.'.join(given)}" if given else ""
                raise OipError(
                    400,
                    f"{where}: {show(tensor.datatype)} contents go in "
                    f"{'raw_input_contents' if wanted is None else 'contents.' + wanted}{got}",
                )
            item["data"] = list(getattr(tensor.contents, wanted))
        inputs.append(item)
    doc: dict[str, Any] = {"parameters": _parameters(request.parameters, "the inference request"), "inputs": inputs}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [
            {"name": out.name, "parameters": _parameters(out.parameters, f"output {show(out.name)}")}
            for out in request.outputs
        ]
    return doc, b"".join(raw)


def infer_response(fn: Function, call: InferCall, results: Mapping[str, np.ndarray]):
    """The ``ModelInferResponse`` of a call: every requested output as raw contents, as Triton answers."""
    response = pb.ModelInferResponse(model_name=fn.name, model_version=str(fn.version), id=call.id or "")
    for spec, _ in call.outputs:
        array = np.ascontiguousarray(results[spec.name]).view(spec.dtype).reshape(spec.shape)
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


# REST's JSON answers (oip.model_metadata, oip.model_config, InferenceStats.report) are the one source of
# both transports' answers; a field REST adds that these messages lack is left out rather than failing the call
def metadata_response(metadata: dict[str, Any]):
    """``ModelMetadata`` from ``GET /v2/models/{name}``'s answer (:func:`~.oip.model_metadata`)."""
    return json_format.ParseDict(metadata, pb.ModelMetadataResponse(), ignore_unknown_fields=True)


def config_response(config: dict[str, Any]):
    """``ModelConfig`` from Triton's JSON form of a model configuration (:func:`~.oip.model_config`)."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig(), ignore_unknown_fields=True))


def statistics_response(report: dict[str, Any]):
    """``ModelStatistics`` from Triton's JSON form of statistics (``{"model_stats": [...]}``)."""
    return json_format.ParseDict(report, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)
