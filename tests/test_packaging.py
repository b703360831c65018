"""The wheel users install, built from this source tree once a session.

Complete: every package folder of the tree (camserve/, export/, server/, client/, demo/
and whatever folders they grow) ships under its camserve.* name, with its files, and
each module imports from the installed wheel alone.

Thin: `pip install camserve` into a fresh venv brings no TensorFlow, Keras or h5py; its
client explains a demo sample through a real server; the server's commands say which
extra they need instead of a traceback."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Top-level folders that are packages of the repository but not of the wheel.
NOT_SHIPPED = {"tests"}
# Never copied into the build: the VCS, virtualenvs, in-tree build output (a stale
# build/lib would ship files the tree no longer has), outputs of make demo / make serve.
TOP_LEVEL_JUNK = {".git", ".venv", "build", "dist", "out", "models", ".pytest_cache", ".hypothesis"}
# What a thin install must not contain (the server and plots extras, and what they bring).
HEAVY = {"tensorflow", "tensorflow-cpu", "keras", "h5py", "tf-keras", "ml-dtypes", "keras-hub", "tensorflow-text", "matplotlib"}
NETWORK_TROUBLE = (
    "NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution", "Name or service not known",
    "Network is unreachable", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError", "SSLError",
)


def _walk(folder: Path):
    """Folders under `folder` (itself first), skipping caches and hidden folders."""
    yield folder
    for child in sorted(folder.iterdir()):
        if child.is_dir() and child.name != "__pycache__" and not child.name.startswith("."):
            yield from _walk(child)


def package_roots() -> list[Path]:
    """The top-level folders with an __init__.py, tests/ aside."""
    return [top for top in sorted(REPO.iterdir()) if (top / "__init__.py").is_file() and top.name not in NOT_SHIPPED]


def source_packages() -> dict[str, Path]:
    """{installed name: folder} of every package folder in the tree: each root
    (camserve/ as `camserve`, X/ as `camserve.X`), and every folder with an
    __init__.py below one, however deep."""
    packages = {}
    for top in package_roots():
        root = "camserve" if top.name == "camserve" else f"camserve.{top.name}"
        for folder in _walk(top):
            if (folder / "__init__.py").is_file():
                packages[".".join([root, *folder.relative_to(top).parts])] = folder
    return packages


def shipped_files(packages: dict[str, Path]) -> dict[str, Path]:
    """{path inside site-packages: source file} of every file in the package folders,
    data such as server/page/ and demo/samples/ included (compiled caches aside)."""
    files = {}
    for name, folder in packages.items():
        target = Path(*name.split("."))
        for path in folder.rglob("*"):
            inside = path.relative_to(folder)
            if not path.is_file() or path.suffix == ".pyc" or any(part == "__pycache__" or part.startswith(".") for part in inside.parts):
                continue
            # A subpackage's files are its own entry's.
            owner = next((p for p in reversed(inside.parents) if p != Path(".") and (folder / p / "__init__.py").is_file()), None)
            if owner is None:
                files[str(target / inside)] = path
    return files


def modules(packages: dict[str, Path]) -> list[str]:
    """Every module of the package folders, as installed (the __main__ scripts aside)."""
    names = []
    for name, folder in packages.items():
        names.append(name)
        names += [f"{name}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem not in ("__init__", "__main__")]
    return names


def test_every_package_folder_is_in_pyproject():
    """Found from the tree, so that new folders (server/pipeline/, ...) are checked too:
    each is listed in [tool.setuptools] packages and maps to its folder in package-dir;
    a folder of modules without an __init__.py would import here and be missing from the wheel."""
    found = source_packages()
    setup = PYPROJECT["tool"]["setuptools"]
    listed, dirs = set(setup["packages"]), setup["package-dir"]
    unlisted, gone = sorted(set(found) - listed), sorted(listed - set(found))
    assert unlisted == [], f"package folders missing from pyproject.toml's [tool.setuptools] packages: {unlisted}"
    assert gone == [], f"pyproject.toml lists packages the tree does not have: {gone}"
    wrong = {n: dirs.get(n) for n, folder in found.items() if dirs.get(n) != folder.relative_to(REPO).as_posix()}
    assert wrong == {}, f"package-dir should map each package to its folder: {wrong}"
    orphans = [
        folder.relative_to(REPO).as_posix()
        for root in package_roots()
        for folder in _walk(root)
        if any(folder.glob("*.py")) and not (folder / "__init__.py").is_file()
    ]
    assert orphans == [], f"folders of modules without an __init__.py (the wheel leaves them out): {orphans}"


def _source_copy(destination: Path) -> Path:
    """The tree as it is (uncommitted files too), without what must not reach a build;
    setuptools builds in the tree it is given, and this one is thrown away after."""

    def ignore(folder, names):
        junk = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return junk | (TOP_LEVEL_JUNK & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The camserve wheel of this tree, built with the environment's setuptools (the
    pinned build backend) and no isolation: no download, about 2 s."""
    folder = tmp_path_factory.mktemp("wheel")
    source = _source_copy(folder / "source")
    started = time.monotonic()
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q"]
    done = subprocess.run([*command, "-w", str(folder / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (folder / "dist").glob("camserve-*.whl")
    print(f"\nwheel built in {time.monotonic() - started:.1f}s: {built.name}, {built.stat().st_size / 1e6:.1f} MB")
    return built


def _venv(path: Path) -> Path:
    """A fresh venv without pip of its own (this environment's pip installs into it
    with --python: the same pip, seconds faster than ensurepip); its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path / "bin" / "python"


def _pip(python: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True)
    return Path(out.stdout.strip())


def _run(python: Path, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` in the venv, isolated: no PYTHONPATH, no user site, and not this tree on
    sys.path (the current folder is a temporary one), so camserve is the installed wheel."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(python), "-I", "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=timeout,
        cwd=python.parent.parent, env=env,
    )


@pytest.fixture(scope="module")
def complete_venv(wheel, tmp_path_factory) -> Path:
    """The wheel alone (--no-deps) in a fresh venv that sees this environment's
    libraries through a .pth line: a plain path, so that the .pth files over there (the
    editable install's finder among them) are not run and camserve is the wheel's.
    The line is added after the install: pip never sees this environment's camserve."""
    python = _venv(tmp_path_factory.mktemp("complete") / "venv")
    done = _pip(python, "install", "--no-deps", "-q", str(wheel))
    assert done.returncode == 0, done.stderr[-3000:]
    full = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (_site_packages(python) / "full_environment.pth").write_text("".join(f"{p}\n" for p in full))
    return python


def test_wheel_ships_every_package_folder_with_its_files(complete_venv):
    packages = source_packages()
    installed = _site_packages(complete_venv)
    missing = sorted(path for path in shipped_files(packages) if not (installed / path).is_file())
    assert missing == [], f"in the tree but not in the wheel (pyproject.toml: packages, package-dir, package-data): {missing}"
    # The data the server and the demo read, wherever server/ keeps its page.
    assert list(installed.glob("camserve/server/**/page/index.html")), "the page"
    for data in ("model.keras", "labels.txt"):
        assert (installed / "camserve" / "demo" / data).is_file(), data
    assert len(list((installed / "camserve" / "demo" / "samples").glob("*.png"))) >= 5, "the demo's sample images"


def test_wheel_imports_every_module_from_the_installed_wheel(complete_venv):
    """Every package and module the tree has, imported under its camserve.* name in the
    venv: each from the venv's site-packages, none from a source tree."""
    names = modules(source_packages())
    script = """
        import importlib, json, sys, sysconfig
        site = sysconfig.get_paths()["purelib"]
        failed, outside = {}, {}
        for name in json.loads(sys.argv[1]):
            try:
                module = importlib.import_module(name)
            except Exception as err:
                failed[name] = repr(err)
                continue
            if not (module.__file__ or "").startswith(site):
                outside[name] = module.__file__
        import camserve
        print(json.dumps({"failed": failed, "outside": outside, "camserve": camserve.__file__, "site": site}))
    """
    started = time.monotonic()
    done = _run(complete_venv, script, json.dumps(names))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    print(f"\nimported {len(names)} modules from the wheel in {time.monotonic() - started:.1f}s")
    assert result["camserve"].startswith(result["site"]), result
    assert result["failed"] == {}, f"modules that do not import from the installed wheel: {result['failed']}"
    assert result["outside"] == {}, f"modules imported from outside the venv: {result['outside']}"
    command = _run(complete_venv, "from camserve.cli import main; main(['serve', '--help'])")
    assert command.returncode == 0 and "--repo" in command.stdout, command.stderr[-2000:]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_cli_knows_the_modules_each_extra_installs():
    """camserve/cli.py looks up the modules of an extra before a command that needs it
    runs; its table is pyproject.toml's optional-dependencies, module by distribution."""
    spec = importlib.util.spec_from_file_location("camserve_cli_of_this_tree", REPO / "camserve" / "cli.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)  # this tree's: `import camserve` may be another checkout's
    providers = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            providers.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, (_, listed) in cli.EXTRAS.items():
        dists = [_requirement_name(r) for r in extras[extra] if _requirement_name(r) != "camserve"]
        provided = {dist: providers.get(dist, set()) for dist in dists}
        assert {d for d, mods in provided.items() if not mods & set(listed)} == set(), f"[{extra}]: add a module of each to cli.EXTRAS"
        assert set(listed) <= set().union(*provided.values()), f"cli.EXTRAS[{extra!r}] names modules [{extra}] does not install"
    assert set(cli.NEEDS.values()) <= set(cli.EXTRAS) <= set(extras)


def _pip_install_or_skip(python: Path, *args: str) -> float:
    started = time.monotonic()
    done = _pip(python, "install", "-q", *args)
    if done.returncode != 0 and any(sign in done.stderr for sign in NETWORK_TROUBLE):
        pytest.skip(f"pip cannot reach the package index: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return time.monotonic() - started


@pytest.fixture(scope="module")
def thin_venv(wheel, tmp_path_factory) -> Path:
    """`pip install camserve` as a service does it: the wheel and its dependencies from
    the package index, in a fresh venv."""
    python = _venv(tmp_path_factory.mktemp("thin") / "venv")
    elapsed = _pip_install_or_skip(python, str(wheel))
    print(f"\nthin install (the wheel and its dependencies from the index) in {elapsed:.1f}s")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(complete_venv, demo_repo, tmp_path_factory):
    """`camserve serve` of this tree's wheel (the complete venv: the full environment's
    libraries) on the session's exported demo model, `shapes`, on loopback; its target."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = _free_port()
    log = tmp_path_factory.mktemp("logs") / "server.log"
    command = [str(complete_venv), "-I", "-m", "camserve", "serve", "--repo", str(demo_repo), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--http-port", "0", "--metrics-port", "0", "--max-batch-size", "1"]  # one size to warm up
    started = time.monotonic()
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=complete_venv.parent.parent)
    target = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(target, options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)])
    try:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() - started < 180, f"the server is not serving after 180 s:\n{log.read_text()[-3000:]}"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        print(f"\nserver of the wheel serving in {time.monotonic() - started:.1f}s")
        yield target
    finally:
        channel.close()
        process.terminate()
        process.wait(60)


def test_thin_install_has_no_tensorflow_keras_or_h5py(thin_venv):
    listing = _pip(thin_venv, "list", "--format=json")
    assert listing.returncode == 0, listing.stderr
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    print(f"\nthin install: {', '.join(sorted(installed))}")
    assert "camserve" in installed
    assert installed & HEAVY == set()
    probe = _run(thin_venv, "import importlib.util; print([m for m in ('tensorflow', 'keras', 'h5py', 'matplotlib') if importlib.util.find_spec(m)])")
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_thin_client_explains_a_demo_sample_through_a_running_server(thin_venv, demo_server, tmp_path):
    script = """
        import json, sys
        from importlib.resources import files

        import camserve
        from camserve.client import Client

        sample = files("camserve.demo") / "samples" / "sample_1_square.png"
        with Client(sys.argv[1], model="shapes", timeout=60) as client:
            result = client.explain(sample.read_bytes())
        heavy = [m for m in ("tensorflow", "keras", "h5py", "matplotlib") if m in sys.modules]
        print(json.dumps({"label": result.label, "heatmap": list(result.heatmap.shape), "file": camserve.__file__, "prefix": sys.prefix, "heavy": heavy}))
    """
    done = _run(thin_venv, script, demo_server, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    print(f"\nthin client: {result['label']}, heatmap {result['heatmap']}")
    assert result["file"].startswith(result["prefix"]), result
    assert result["label"] == "square" and len(result["heatmap"]) == 2 and min(result["heatmap"]) > 0
    assert result["heavy"] == []
    # The command too: an overlay and results.csv, through the same server.
    sample = _site_packages(thin_venv) / "camserve" / "demo" / "samples" / "sample_1_square.png"
    explain = subprocess.run(
        [str(thin_venv.parent / "camserve"), "explain", str(sample), "--target", demo_server, "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert explain.returncode == 0, explain.stderr[-3000:]
    assert "square" in (tmp_path / "out" / "results.csv").read_text()


@pytest.mark.parametrize(
    "args, extra",
    [
        (["serve", "--repo", "models"], "server"),
        (["export", "demo", "--repo", "models", "--name", "shapes"], "server"),
        (["loadtest", "--target", "127.0.0.1:1"], "plots"),
        (["evaluate", "images", "--target", "127.0.0.1:1", "--out", "out"], "plots"),
    ],
)
def test_thin_install_names_the_extra_a_command_needs(thin_venv, tmp_path, args, extra):
    camserve = str(thin_venv.parent / "camserve")
    helped = subprocess.run([camserve, args[0], "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert helped.returncode == 0 and "usage: camserve" in helped.stdout, helped.stderr[-2000:]
    done = subprocess.run([camserve, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert f"pip install 'camserve[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
