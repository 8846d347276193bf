"""The _core.pyi stub lists exactly the compiled module's functions, with the same parameters."""

import ast
import inspect
import re
from pathlib import Path

import cnnfast
from cnnfast import _core


def stub_functions():
    stub = Path(cnnfast.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    return {node.name: [a.arg for a in node.args.args] for node in tree.body if isinstance(node, ast.FunctionDef)}


def compiled_functions():
    functions = {}
    for name, obj in vars(_core).items():
        if callable(obj) and not name.startswith("__"):
            # pybind11 signature line: "name(x: ..., w: ..., padding: int = 0) -> ..."
            signature = obj.__doc__.splitlines()[0]
            params = re.findall(r"(\w+): ", signature[signature.index("(") + 1 : signature.rindex(")")])
            functions[name] = params
    return functions


def test_stub_matches_compiled_module():
    assert stub_functions() == compiled_functions()


def test_functional_wraps_every_public_kernel():
    import cnnfast.functional as F

    for name in F.__all__:
        assert callable(getattr(F, name)) and name in vars(_core)
        assert inspect.getdoc(getattr(F, name))


def test_the_version_is_written_once_in_pyproject():
    """__version__ and build_info()["version"] come from the installed metadata, which
    pyproject.toml's version fills: no second copy to forget."""
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'(?m)^version = "([^"]+)"$', pyproject).group(1)
    assert cnnfast.__version__ == version == cnnfast.build_info()["version"]
    init = Path(cnnfast.__file__).read_text()
    assert version not in init


def test_importing_cnnfast_leaves_the_allocator_alone_and_training_asks(tmp_path):
    # mallopt is process-wide: a notebook or server that imports cnnfast keeps glibc's behaviour;
    # the training command asks for the heap reuse it measured (a fifth of a step).
    import subprocess
    import sys

    code = (
        "import cnnfast, sys; from cnnfast import _core;"
        "before = _core.freed_memory_reused();"
        "from _idx_helpers import synthetic_mnist, write_mnist_dir;"
        f"write_mnist_dir({str(tmp_path)!r}, synthetic_mnist(n_train=64, n_test=8, seed=0));"
        "from cnnfast import train;"
        f"status = train.main(['--data-dir', {str(tmp_path)!r}, '--no-verify', '--epochs', '1',"
        f" '--out', {str(tmp_path / 'm.npz')!r}]);"
        "print(before, _core.freed_memory_reused(), status)"
    )
    tests = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, timeout=120)
    assert out.returncode == 0, out.stderr
    glibc = __import__("platform").libc_ver()[0] == "glibc"
    assert out.stdout.split()[-3:] == ["False", str(glibc), "0"], out.stdout
