import os

import pytest

import cnnfast
from cnnfast import _core

_INFO = cnnfast.build_info()
SUPPORTED_ISAS = _INFO["isa_supported"]
# Every instruction set of this architecture's build; those this CPU cannot run are reported as
# skipped, by name, rather than silently absent.
ISA_PARAMS = [
    isa if isa in SUPPORTED_ISAS else pytest.param(isa, marks=pytest.mark.skip(reason=f"this CPU cannot run {isa}"))
    for isa in _INFO["isa_compiled"]
]


@pytest.fixture(params=ISA_PARAMS)
def isa(request):
    """Run the test once per instruction set, every kernel forced to it (CNNFAST_ISA's mechanism)."""
    before = cnnfast.build_info()["isa"]
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


@pytest.fixture(params=["few_pixels off", "few_pixels on"])
def few_pixels(request):
    """Run a conv2d test twice: with the few-pixels path off (each layer takes the path it takes at
    a larger batch: panels, Winograd, direct, ...) and taking every layer it can (any pixel count)."""
    before = _core.set_few_pixels_limit(0 if request.param.endswith("off") else 2**62)
    yield request.param
    _core.set_few_pixels_limit(before)


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


@pytest.fixture
def synthetic_dir(tmp_path):
    """A directory of synthetic MNIST files (300 training and 50 test images of noise)."""
    from _idx_helpers import synthetic_mnist, write_mnist_dir

    directory = tmp_path / "data"
    directory.mkdir()
    write_mnist_dir(directory, synthetic_mnist(n_train=300, n_test=50, seed=1))
    return str(directory)


@pytest.fixture(autouse=True)
def signal_handlers_left_as_they_were():
    """No test (nor the code it calls in-process) may leave SIGINT or SIGTERM handled otherwise
    than before it: the subprocesses of later tests would inherit an ignored Ctrl-C."""
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
