"""The _core.pyi stub lists exactly the compiled module's functions, with the same parameters."""

import ast
import inspect
import re
from pathlib import Path

import pytest

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
    from importlib import metadata

    try:
        metadata.version("cnnfast")
    except metadata.PackageNotFoundError:  # (.ci/aarch64 runs the package from a directory, not installed)
        assert cnnfast.__version__ == cnnfast.build_info()["version"] == "0+unknown"
        pytest.skip("cnnfast is imported from a directory, not installed: it has no metadata to read")
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'(?m)^version = "([^"]+)"$', pyproject).group(1)
    assert cnnfast.__version__ == version == cnnfast.build_info()["version"]
    init = Path(cnnfast.__file__).read_text()
    assert version not in init
