import os
import shutil

import pytest
from filelock import FileLock

pytest_plugins = ["tests.suite_stats", "tests.harness"]


def shared(tmp_path_factory):
    """A folder every worker of this run shares (xdist gives each its own basetemp in one parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once(folder, name: str, make):
    """`folder/name`, made by `make(path)` by the first worker that asks; the others
    wait on its lock and take it as made."""
    path = folder / name
    with FileLock(f"{path}.lock"):
        if not path.exists():
            partial = folder / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            make(partial)
            partial.rename(path)
    return path


# The recipes exported with XLA: every head (softmax, sigmoid, binary, linear), a backbone
# nested in the model (test_export_cli reads its XLA attributes) and, through `functional`,
# every method; the served `tiny` is `functional` too. The others run as plain
# graphs: XLA is not what they test, and each batch size a loaded XLA export is called at
# compiles a program (2-3 s, mapped until the process ends). Only the XLA recipes run the
# export's own float64 verification (test_verify tests it): the tests compare every plain
# recipe's maps with the float64 reference themselves.
XLA_RECIPES = {"functional", "nested", "sigmoid", "binary", "logits"}


class Exports:
    """Exports each test model once per run, whichever worker asks first; each worker
    loads it and builds the Keras twins it compares with (seeded: the same weights)."""

    def __init__(self, folder):
        self.folder = folder
        self._done = {}

    def get(self, kind: str, seed: int = 0, transform=None, key=None, more_layers=()):
        """`more_layers`: target layers exported after the model's own (test_model.layers).
        `key` names the recipe when it is not `kind` alone (a transform, more layers)."""
        key = key or kind
        if key not in self._done:
            import tensorflow as tf

            from camserve.export.exporter import ExportOptions, export
            from tests import models

            model32, model64 = models.build(kind, seed, transform)

            def make(folder):
                folder.mkdir()
                model32.model.save(folder / f"{key}.keras")
                options = ExportOptions(
                    source=str(folder / f"{key}.keras"), repo=str(folder / "repo"), name=key, preprocess="scale",
                    layer=[model32.target, *more_layers], xla=key in XLA_RECIPES, verify=key in XLA_RECIPES,
                )
                export(options)

            path = once(self.folder, key, make) / "repo" / key / "1"
            self._done[key] = (path, tf.saved_model.load(str(path)), model32, model64)
        return self._done[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    folder = shared(tmp_path_factory) / "exports"
    folder.mkdir(exist_ok=True)
    return Exports(folder)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory):
    """The bundled demo model exported as users get it, as `shapes` in a repository."""
    from camserve.export.exporter import ExportOptions, export

    return once(shared(tmp_path_factory), "demo", lambda folder: export(ExportOptions(source="demo", repo=str(folder), name="shapes")))


@pytest.fixture(scope="session")
def server_repo(exports, tmp_path_factory):
    """A repository with the functional test model as `tiny`."""
    path, *_ = exports.get("functional")
    repo = tmp_path_factory.mktemp("serve") / "repo"
    shutil.copytree(path, repo / "tiny" / "1")
    return repo


@pytest.fixture(scope="session")
def server(server_repo, tmp_path_factory):
    from camserve.server.ops.process import serving

    with serving(server_repo, tmp_path_factory.mktemp("logs") / "server.log", "--max-batch-size", "8") as process:
        yield process


@pytest.fixture(scope="module")
def native(server):
    """The camserve client on `server`'s `tiny` model."""
    from camserve.client import Client

    with Client(server.target, model="tiny") as client:
        yield client


SHAPED_BACKGROUND = 0x3366CC  # not the default white, so tests can tell the flag took effect


@pytest.fixture(scope="session")
def shaped_server(exports, tmp_path_factory):
    """The non-square test models `wide` (48x96, HxW) and `tall` (96x48) from one
    repository, served with `--background` set to SHAPED_BACKGROUND."""
    repo = tmp_path_factory.mktemp("serve_shaped") / "repo"
    for kind in ("wide", "tall"):
        path, *_ = exports.get(kind)
        shutil.copytree(path, repo / kind / "1")
    from camserve.server.ops.process import serving

    log = tmp_path_factory.mktemp("logs") / "shaped_server.log"
    # Its tests send one image a call: one batch size to warm up (each is an XLA compile per
    # signature and model; 1 to 8 was most of this fixture's time).
    with serving(repo, log, "--max-batch-size", "1", "--background", f"{SHAPED_BACKGROUND:06X}") as process:
        yield process
