"""The gateway's own OpenAPI 3.0 document: the Open Inference Protocol v2 REST endpoints it serves.

Written for this gateway from the protocol's specification (KServe's ``rest_predict_v2.yaml``)
and Triton's model configuration and statistics extensions: every path, its parameters, the
bearer token it needs, and the body of every status it can answer, so a schema-driven client or
fuzzer (schemathesis in the test suite) can check each answer. Served at ``/v2/openapi.json``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/error"}
_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict:
    text = {
        400: "Bad request: the message names the field or tensor",
        401: "No valid bearer token",
        403: "The tenant may not make this call",
        404: "No such function for this tenant (or a private one)",
        408: "The body did not arrive within the gateway's read timeout",
        409: "The store no longer holds the consts this function was written for",
        413: "The body is larger than the function or the gateway allows",
        415: "Unsupported Content-Encoding",
        422: "An output holds values JSON cannot carry (NaN, infinity): ask for it as binary data",
        429: "Rate limit or admission: retry after Retry-After seconds",
        500: "The call failed on the cluster",
        503: "Not ready",
        504: "The call took longer than the timeout",
    }
    return {str(s): _json(_ERROR, text[s]) for s in statuses}


def _path_parameters(version: bool) -> list[dict]:
    params = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    if version:
        params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _model_paths(prefix: str, version: bool) -> dict[str, dict]:
    params = _path_parameters(version)
    common = _errors(400, 401, 404, 409)
    return {
        prefix: {
            "parameters": params,
            "get": {
                "summary": "Model metadata",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/metadata_model_response"}, "The model"),
                    **common,
                },
            },
        },
        f"{prefix}/ready": {
            "parameters": params,
            "get": {
                "summary": "Model ready",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/model_ready"}, "Ready"),
                    "503": _json({"$ref": "#/components/schemas/model_ready"}, "Not ready"),
                    **common,
                },
            },
        },
        f"{prefix}/config": {
            "parameters": params,
            "get": {
                "summary": "Model configuration (Triton's extension)",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/model_config"}, "The configuration"),
                    **common,
                },
            },
        },
        f"{prefix}/stats": {
            "parameters": params,
            "get": {
                "summary": "Model statistics for the caller's tenant (Triton's extension)",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/model_statistics"}, "The statistics"),
                    **common,
                },
            },
        },
        f"{prefix}/infer": {
            "parameters": params,
            "post": {
                "summary": "Inference",
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/inference_request"}}},
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/inference_response"}, "The outputs"),
                    **_errors(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 500, 504),
                },
            },
        },
    }


def _schemas() -> dict[str, Any]:
    tensor_data = {
        "type": "array",
        "items": {
            "anyOf": [
                {"$ref": "#/components/schemas/tensor_data"},
                {"type": "number"},
                {"type": "string"},
                {"type": "boolean"},
            ]
        },
    }
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    parameters = {"type": "object"}
    tensor = {  # a request's input and a response's output have the same fields
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": shape,
            "datatype": {"type": "string"},
            "parameters": parameters,
            "data": tensor_data,
        },
    }
    return {
        "error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
        "parameters": parameters,
        "tensor_data": tensor_data,
        "metadata_server_response": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "model_ready": {
            "type": "object",
            "required": ["ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
        "metadata_tensor": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": shape},
        },
        "metadata_model_response": {
            "type": "object",
            "required": ["name", "platform"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/metadata_tensor"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/metadata_tensor"}},
            },
        },
        "model_config": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "max_batch_size": {"type": "integer"},
                "input": {"type": "array", "items": {"type": "object"}},
                "output": {"type": "array", "items": {"type": "object"}},
            },
        },
        "model_statistics": {
            "type": "object",
            "required": ["model_stats"],
            "properties": {"model_stats": {"type": "array", "items": {"type": "object"}}},
        },
        "repository_index": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"}},
            },
        },
        "request_input": tensor,
        "request_output": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": parameters},
        },
        "inference_request": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "parameters": parameters,
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/request_input"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/request_output"}},
            },
        },
        "response_output": tensor,
        "inference_response": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "parameters": parameters,
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/response_output"}},
            },
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the gateway's REST endpoints (``version``: dask-kaas's)."""
    paths: dict[str, dict] = {
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "responses": {"200": _json({"$ref": "#/components/schemas/metadata_server_response"}, "The server")},
            }
        },
        "/v2/health/live": {
            "get": {
                "summary": "Server live",
                "responses": {"200": _json({"$ref": "#/components/schemas/live"}, "Live")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Server ready",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ready"}, "Ready"),
                    "503": _json({"$ref": "#/components/schemas/ready"}, "Not ready"),
                },
            }
        },
        "/v2/repository/index": {
            method: {
                "summary": "The functions this tenant can call",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/repository_index"}, "The index"),
                    **_errors(401),
                },
            }
            for method in ("get", "post")
        },
        "/v2/models/stats": {
            "get": {
                "summary": "Statistics of every function the caller's tenant can call (Triton's extension)",
                "security": _AUTH,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/model_statistics"}, "The statistics"),
                    **_errors(401),
                },
            }
        },
    }
    paths.update(_model_paths("/v2/models/{model}", version=False))
    paths.update(_model_paths("/v2/models/{model}/versions/{version}", version=True))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dask-kaas gateway: Open Inference Protocol v2",
            "version": version,
            "description": "KServe's Open Inference Protocol v2 REST API as the dask-kaas gateway serves it, "
            "with Triton's binary tensor, model configuration and statistics extensions. "
            "Every model call needs a tenant's bearer token.",
        },
        "paths": paths,
        "components": {"schemas": _schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
