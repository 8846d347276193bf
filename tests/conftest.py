import os

import pytest

import cnnfast
from cnnfast import _core

SUPPORTED_ISAS = cnnfast.build_info()["isa_supported"]


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Run the test once per instruction set this CPU supports (every compiled GEMM path)."""
    before = cnnfast.build_info()["isa"]
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = cnnfast.get_num_threads()
    yield
    cnnfast.set_num_threads(before)


def mnist_dir():
    """The real MNIST directory from $CNNFAST_DATA, or skip (fail under CNNFAST_REQUIRE_DATA=1)."""
    path = os.environ.get("CNNFAST_DATA")
    if path and os.path.isdir(path):
        return path
    message = "real MNIST not found: set CNNFAST_DATA to a directory with the four IDX files"
    if os.environ.get("CNNFAST_REQUIRE_DATA") == "1":
        pytest.fail(message + " (CNNFAST_REQUIRE_DATA=1)")
    pytest.skip(message)
