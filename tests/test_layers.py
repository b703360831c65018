"""server/ is layered (README, layout): ops, then the pipeline, then the models,
then the transports, then the process that wires them. An import runs only
downwards, never in a cycle; gRPC and HTTP never import each other; no server
module imports the client package; and the request path loads without
TensorFlow. Read from the source with ast, so a lazy import inside a function
counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"
LAYERS = {"ops": 0, "pipeline": 1, "models": 2, "transports": 3}
TOP = 4  # app.py, cli.py, options.py, worker.py


def _module(path: Path) -> str:
    parts = list(path.relative_to(SERVER).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["camserve", "server", *parts])


def _imports(path: Path) -> set[str]:
    """The camserve.server modules `path` imports, resolved."""
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            names = [f"{module}.{alias.name}" for alias in node.names]
            found.update(names if node.module is None else [module, *names])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = {_module(p): p for p in SERVER.rglob("*.py")}
GRAPH = {name: {i for i in _imports(path) if i in MODULES} for name, path in MODULES.items()}
EVERY_IMPORT = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[2], TOP) if len(parts) > 2 else TOP


def test_imports_run_only_downwards():
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in targets
        if _layer(target) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]):
        state[node] = "open"
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [node])


def test_no_transport_imports_another_nor_the_client():
    grpc_, http = "camserve.server.transports.grpc", "camserve.server.transports.http"
    crossing = [
        f"{name} imports {target}"
        for name, targets in EVERY_IMPORT.items()
        for target in targets
        if (name.startswith(grpc_) and target.startswith(http))
        or (name.startswith(http) and target.startswith(grpc_))
        or target.startswith("camserve.client")
    ]
    assert not crossing, "\n".join(crossing)


# TF Serving's gRPC messages are tensorflow-serving-api's, which import TensorFlow's own
# protobufs (and with them TensorFlow): that adapter alone is TensorFlow's by its wire format.
SPEAKS_TENSORFLOW = {"camserve.server.transports.grpc.tfserving"}


def test_the_request_path_imports_without_tensorflow():
    """Everything a request passes through, down to the registry; only the served
    model (models/served.py), device placement and the adapter whose wire format is
    TensorFlow's protobufs load TensorFlow."""
    request_path = [
        name for name in MODULES
        if name.startswith(("camserve.server.pipeline", "camserve.server.transports")) and name not in SPEAKS_TENSORFLOW
    ] + ["camserve.server.models.registry", "camserve.server.models.config", "camserve.server.options"]
    code = "import sys\n" + "".join(f"import {name}\n" for name in sorted(request_path)) + (
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check can fail: a pipeline module that imports the registry is caught."""
    path = SERVER / "pipeline" / "explain.py"
    imports = _imports(path) | {"camserve.server.models.registry"}
    assert any(_layer(t) > _layer(_module(path)) for t in imports if t in MODULES)
    assert "camserve.server.pipeline.batcher" in _imports(path)  # relative imports resolve
