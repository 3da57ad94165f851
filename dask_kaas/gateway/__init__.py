"""The Open Inference Protocol gateway: tenants call registered functions over HTTP/REST and gRPC.

================  =================================================================
``tokens``      bearer tokens per tenant, kept hashed in a YAML file
``ratelimit``   a token bucket per tenant (pure)
``oip``         Open Inference Protocol v2 tensors: JSON and binary in, JSON and binary out (pure)
``metrics``     the gateway's own Prometheus metrics
``app``         the ASGI application (Starlette) over one asynchronous Dask client
``server``      ``dask kaas gateway``: the application on uvicorn
==============  ===================================================================

Nothing here is imported eagerly: the token tools need neither Starlette nor distributed.
"""
