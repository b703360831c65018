import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests import models  # noqa: E402


class Exports:
    """Exports each test model once per session into one repository."""

    def __init__(self, repo):
        self.repo = repo
        self._done = {}

    def get(self, kind: str, seed: int = 0, transform=None, key=None, more_layers=()):
        """`more_layers`: target layers exported after the model's own (test_model.layers)."""
        key = key or kind
        if key not in self._done:
            import tensorflow as tf

            from camserve.export.exporter import ExportOptions, export

            model32, model64 = models.build(kind, seed, transform)
            source = self.repo.parent / f"{key}.keras"
            model32.model.save(source)
            path = export(
                ExportOptions(
                    source=str(source), repo=str(self.repo), name=key, preprocess="scale", layer=[model32.target, *more_layers]
                )
            )
            self._done[key] = (path, tf.saved_model.load(str(path)), model32, model64)
        return self._done[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    return Exports(tmp_path_factory.mktemp("export") / "repo")


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory):
    """The bundled demo model exported as users get it, as `shapes` in a repository."""
    from camserve.export.exporter import ExportOptions, export

    repo = tmp_path_factory.mktemp("demo") / "repo"
    export(ExportOptions(source="demo", repo=str(repo), name="shapes"))
    return repo


@pytest.fixture(scope="session")
def server_repo(exports, tmp_path_factory):
    """A repository with the functional test model as `tiny`."""
    import shutil

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
    import shutil

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
