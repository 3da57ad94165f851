"""Errors must survive the trip from a worker to the client with their type and message."""

import pytest
from distributed.protocol.pickle import dumps, loads

from dask_kaas import errors


@pytest.mark.parametrize(
    "cls",
    [
        errors.KaasError,
        errors.RequestError,
        errors.KernelError,
        errors.DeviceMemoryError,
        errors.StoreError,
        errors.StoreKeyError,
    ],
)
def test_error_round_trips_through_distributed_pickle(cls):
    err = loads(dumps(cls("buffer 'x': something broke")))
    assert type(err) is cls
    assert str(err) == "buffer 'x': something broke"
    assert isinstance(err, errors.KaasError)
