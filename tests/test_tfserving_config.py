"""A model directory TF Serving could serve is served: TF Serving's models.config
(--model-config-file), its one-model start (--model-base-path, --model-name), its
flag spellings, version labels in the registry, and the 8501 rule for the
separate metrics port."""

import shutil
import subprocess
import sys
import textwrap
import urllib.request

import grpc
import numpy as np
import pytest

from camserve.server.models import tfserving_config
from camserve.server.models.config import ConfigError, ModelConfig, VersionPolicy, parse
from camserve.server.models.registry import AVAILABLE, LOADING, UNAVAILABLE, Registry, VersionState
from camserve.server.models.sources import ModelSource
from camserve.server.ops import phase
from camserve.server.pipeline.errors import RequestError
from tests import models


def models_config(root) -> str:
    return textwrap.dedent(
        f"""\
        # TF Serving's own example, with each policy
        model_config_list {{
          config {{
            name: "a"
            base_path: "{root}/a"
            model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
            version_labels {{ key: "stable" value: 1 }}
            version_labels {{ key: "canary" value: 2 }}
          }}
          config {{
            name: 'b'
            base_path: '{root}/b/'
            model_version_policy {{ latest {{ num_versions: 2 }} }}
          }}
          config {{ name: "c" base_path: "{root}/c" model_version_policy {{ all {{}} }} }}
          config {{ name: "d" base_path: "{root}/d" model_platform: "tensorflow" }}
        }}
        """
    )


def test_a_models_config_is_read_into_model_sources(tmp_path):
    sources = tfserving_config.parse(models_config(tmp_path))
    assert [(s.name, s.base_path) for s in sources] == [(n, tmp_path / n) for n in "abcd"]
    a, b, c, d = sources
    assert a.policy == VersionPolicy("specific", (1, 2)) and a.labels == {"stable": 1, "canary": 2}
    assert b.policy == VersionPolicy("latest", count=2) and b.labels == {}
    assert c.policy == VersionPolicy("all")
    assert d.policy is None, "no policy in the file: the flags' (latest by default, as TF Serving's)"
    assert b.policy.choose([1, 2, 3]) == {2, 3} and VersionPolicy().choose([1, 2, 3]) == {3}


def test_reading_a_models_config_imports_no_tensorflow(tmp_path):
    """The command line checks the file before the --workers supervisor starts, which
    never imports TensorFlow (ops/workers.py)."""
    file = tmp_path / "models.config"
    file.write_text(models_config(tmp_path))
    code = (
        "import sys\nfrom camserve.server.models import tfserving_config\n"
        f"assert len(tfserving_config.load({str(file)!r})) == 4\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def one(body: str) -> str:
    return "model_config_list {\n  config {\n" + textwrap.indent(textwrap.dedent(body), "    ") + "  }\n}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (one('name: "a"\nbase_path: "/m/a"\nnum_versions: 2\n'), 'models.config:5:5 : Message type "tensorflow.serving.ModelConfig" has no field named "num_versions"'),
        (one('name: "a"\nbase_path: "/m/a"\nmodel_platform: "pytorch"\n'), "model 'a' (line 3): model_platform 'pytorch': camserve serves 'tensorflow' SavedModels only"),
        (one('name: "a"\nbase_path: "models/a"\n'), "Expected model a to have an absolute path or URI; got base_path()=models/a"),
        (one('name: "a"\nbase_path: "gs://bucket/a"\n'), "is a URI; camserve reads local folders only"),
        (one('name: "a"\n'), "model 'a' (line 3): base_path is missing"),
        (one('base_path: "/m/a"\n'), "a config has no name"),
        (one('name: "a"\nbase_path: "/m/a"\nlogging_config { sampling_config { sampling_rate: 0.5 } }\n'), "logging_config (request logging) is not something camserve does"),
        (one('name: "a"\nbase_path: "/m/a"\nmodel_type: TENSORFLOW\nmodel_platform: "tensorflow"\n'), "Illegal setting both ModelServerConfig::model_type"),
        (one('name: "a"\nbase_path: "/m/a"\nmodel_version_policy { specific { } }\n'), "model_version_policy: the specific version policy needs the versions to serve"),
        (
            one('name: "a"\nbase_path: "/m/a"\nmodel_version_policy { specific { versions: 1 } }\nversion_labels { key: "canary" value: 2 }\n'),
            "version label 'canary' names version 2, which its specific policy (1) never loads",
        ),
        (one('name: "a"\nbase_path: "/m/a"\n  }\n  config {\nname: "a"\nbase_path: "/m/b"\n'), "Illegal to list model a multiple times in config list"),
        ('custom_model_config { type_url: "x" }', "custom_model_config is TF Serving's plug-in point"),
        ("model_config_list { }", "model_config_list lists no model"),
    ],
)
def test_what_camserve_cannot_honour_is_refused_with_a_message(text, message):
    with pytest.raises(ConfigError) as err:
        tfserving_config.parse(text)
    assert message in str(err.value)
    assert str(err.value).startswith("models.config")


def test_config_json_takes_a_latest_count():
    assert parse({"version_policy": {"latest": 2}}, ModelConfig()).policy == VersionPolicy("latest", count=2)
    for bad in ({"latest": 0}, {"latest": "2"}, {"latest": True}):
        with pytest.raises(ConfigError, match="serves at least 1 version"):
            parse({"version_policy": bad}, ModelConfig())
    with pytest.raises(ConfigError, match="latest policy's"):
        VersionPolicy("all", count=2)


class Model:
    def __init__(self, name, version):
        self.name, self.version = name, version


def labelled_registry() -> Registry:
    registry = Registry()
    registry.process.current = phase.SERVING
    for version in (1, 2):
        registry.add(Model("a", version))
    registry.add(Model("b", 1))
    registry.labels["a"] = {"stable": 1, "canary": 2, "next": 3}
    registry.states[("a", 3)] = VersionState(UNAVAILABLE, "SavedModel file does not exist")
    return registry


def refusal(registry, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as err:
        registry.get(*args, **kwargs)
    return err.value


def test_a_version_label_names_a_version_with_tf_servings_statuses():
    registry = labelled_registry()
    assert registry.get("a", label="stable").version == 1
    assert registry.get("a", label="canary").version == 2
    assert registry.get("a").version == 2 and registry.get("a", 1).version == 1

    # server_core.cc GetModelVersionForLabel: INVALID_ARGUMENT, message as TF Serving's.
    unknown = refusal(registry, "a", label="nope")
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.message.startswith("Unrecognized servable version label: nope") and "canary, next, stable" in unknown.message
    assert refusal(registry, "b", label="stable").code == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(registry, "zz", label="stable").code == grpc.StatusCode.INVALID_ARGUMENT, "TF Serving looks the label up first"

    both = refusal(registry, "a", 1, label="stable")
    assert both.code == grpc.StatusCode.INVALID_ARGUMENT and "not both" in both.message

    # A label on a version not loaded: NOT_FOUND, saying which label and why; even while it loads.
    missing = refusal(registry, "a", label="next")
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert "version 3 (label 'next') is not loaded" in missing.message and "SavedModel file does not exist" in missing.message
    registry.states[("a", 3)] = VersionState(LOADING)
    assert refusal(registry, "a", label="next").code == grpc.StatusCode.NOT_FOUND
    assert refusal(registry, "a", 3).code == grpc.StatusCode.UNAVAILABLE, "a version number still says it is loading"
    registry.add(Model("a", 3))
    registry.states[("a", 3)] = VersionState(AVAILABLE)
    assert registry.get("a", label="next").version == 3


def _options(monkeypatch, *argv):
    """The ServerOptions `camserve serve ARGV` would start a server with. The server
    module itself is not imported: its KServe stubs and tritonclient's (which other
    tests load) cannot share a process."""
    import sys
    import types

    from camserve.cli import main

    seen = []
    monkeypatch.setitem(sys.modules, "camserve.server.app", types.SimpleNamespace(serve=lambda options: seen.append(options) or 0))
    assert main(["serve", *argv]) == 0
    return seen[0]


def test_tf_servings_flag_spellings_and_the_8501_rule(monkeypatch, tmp_path):
    (tmp_path / "m").mkdir()
    options = _options(monkeypatch, "--model_base_path", str(tmp_path / "m"), "--model_name", "x", "--rest_api_port", "8501")
    assert (options.model_base_path, options.model_name, options.repo) == (tmp_path / "m", "x", None)
    assert options.http_port == 8501 and options.metrics_port == 0, "8501 is TF Serving's REST port: no separate metrics"
    assert _options(monkeypatch, "--model-base-path", str(tmp_path / "m")).model_name == "default", "TF Serving's default name"
    options = _options(monkeypatch, "--repo", str(tmp_path), "--rest-api-port", "8501", "--metrics-port", "9100")
    assert (options.http_port, options.metrics_port) == (8501, 9100)
    options = _options(monkeypatch, "--repo", str(tmp_path))
    assert (options.http_port, options.metrics_port) == (8000, 8501), "camserve's defaults are unchanged"
    file = tmp_path / "models.config"
    file.write_text(one(f'name: "m"\nbase_path: "{tmp_path / "m"}"\n'))
    options = _options(monkeypatch, "--model_config_file", str(file), "--file_system_poll_wait_seconds", "2")
    assert (options.model_config_file, options.poll_seconds, options.model_config_poll_seconds) == (file, 2.0, 0.0)
    options = _options(monkeypatch, "--model_config_file", str(file), "--model_config_file_poll_wait_seconds", "30")
    assert options.model_config_poll_seconds == 30.0
    assert [s.name for s in options.sources().current().values()] == ["m"]


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "one of the arguments --repo --model-base-path/--model_base_path --model-config-file/--model_config_file is required"),
        (["--repo", "{tmp}", "--model-base-path", "{tmp}/m"], "not allowed with argument"),
        (["--model_config_file", "{tmp}/models.config", "--repo", "{tmp}"], "not allowed with argument"),
        (["--repo", "{tmp}", "--model-name", "x"], "--model-name names the model of --model-base-path"),
        (["--model-config-file", "{tmp}/models.config", "--model", "m"], "--model picks models of a --repo"),
        (["--model-base-path", "{tmp}/nowhere"], "is not a folder"),
        (["--model-config-file", "{tmp}/bad.config"], "bad.config:4:5 : Message type"),
        (["--model-config-file", "{tmp}/gone.config"], "base_path {tmp}/gone is not a folder"),
        (["--model-config-file", "{tmp}/none.config"], "cannot read --model-config-file"),
        (["--repo", "{tmp}", "--http-port", "9000", "--metrics-port", "9000"], "--metrics-port 9000 is also the --http-port"),
        (["--repo", "{tmp}", "--model_config_file_poll_wait_seconds", "5"], "says how often to read --model-config-file; give that too"),
    ],
)
def test_the_model_flags_are_checked_before_anything_starts(tmp_path, capsys, flags, message):
    from camserve.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "models.config").write_text(one(f'name: "m"\nbase_path: "{tmp_path / "m"}"\n'))
    (tmp_path / "bad.config").write_text(one('name: "m"\nbase: "/m"\n'))
    (tmp_path / "gone.config").write_text(one(f'name: "m"\nbase_path: "{tmp_path / "gone"}"\n'))
    argv = ["serve", *(f.format(tmp=tmp_path) for f in flags)]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    assert code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


def test_a_models_config_serves_each_model_by_its_policy(exports, tmp_path):
    """Two versions of `a` with labels stable/canary (specific 1, 2; version 3 on disk
    is not wanted), `b` under latest { num_versions: 2 } of three: served as the file
    says, over camserve's native API; its labels over TF Serving's."""
    from camserve.client import Client
    from camserve.server.ops.process import ServerProcess

    path, *_ = exports.get("functional")
    for name, versions in (("a", (1, 2, 3)), ("b", (1, 2, 3))):
        for version in versions:
            shutil.copytree(path, tmp_path / "models" / name / str(version))
    file = tmp_path / "conf" / "models.config"
    file.parent.mkdir()
    file.write_text(models_config(tmp_path / "models").split("  config { name: \"c\"")[0] + "}\n")
    server = ServerProcess(
        ("--model_config_file", str(file)), tmp_path / "server.log", "--max-batch-size", "1", "--poll-seconds", "0", "--shutdown-delay", "0"
    )
    image = np.zeros((models.SIZE, models.SIZE, 3), np.uint8)
    try:
        server.wait_for("SERVING")
        with Client(server.target) as client:
            served = sorted((m.name, m.version, m.state) for m in client.list_models())
            assert served == [("a", 1, "AVAILABLE"), ("a", 2, "AVAILABLE"), ("b", 2, "AVAILABLE"), ("b", 3, "AVAILABLE")]
            assert client.explain(image, model="a", version=1).version == 1
            assert client.explain(image, model="a").version == 2
            with pytest.raises(grpc.RpcError) as err:
                client.explain(image, model="a", version=3)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        _labels_over_tf_servings_apis(server, image)
    finally:
        server.terminate()
    log = server.log.read_text()
    assert "a: version labels canary -> 2, stable -> 1" in log
    assert "loading a version 3 " not in log and "loading b version 1 " not in log


def test_a_models_config_read_again_loads_unloads_and_relabels(exports, tmp_path):
    """Under --model_config_file_poll_wait_seconds the file is TF Serving's live list: a
    model it adds is loaded, a version its policy adds is loaded beside the served one
    (not reloaded), a new label answers, a file that no longer reads keeps the last good
    list, and a model it drops is unloaded (NOT_FOUND) while the others serve on."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from camserve.client import Client
    from camserve.server.ops.process import ServerProcess
    from tests.tfserving_requests import images_request
    from tests.waiting import eventually

    path, *_ = exports.get("functional")
    for name, version in (("a", 1), ("a", 2), ("b", 1)):
        shutil.copytree(path, tmp_path / "models" / name / str(version))
    file = tmp_path / "models.config"

    def write(*configs: str):
        file.write_text("model_config_list {\n" + "".join(f"  config {{ {c} }}\n" for c in configs) + "}\n")

    def a(*versions: int, labels=(("stable", 1),)):
        listed = " ".join(f"versions: {v}" for v in versions)
        labelled = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in labels)
        return f'name: "a" base_path: "{tmp_path}/models/a" model_version_policy {{ specific {{ {listed} }} }} {labelled}'

    b = f'name: "b" base_path: "{tmp_path}/models/b"'
    write(a(1))
    server = ServerProcess(
        ("--model_config_file", str(file)), tmp_path / "server.log",
        *("--model_config_file_poll_wait_seconds", "0.2", "--poll-seconds", "0", "--max-batch-size", "1", "--shutdown-delay", "0"),
    )
    image = np.zeros((models.SIZE, models.SIZE, 3), np.uint8)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)

    def labelled(model: str, label: str):
        """The version a TF Serving Predict by label ran on, or its status code."""
        try:
            return stub.Predict(images_request(model, image[np.newaxis], "predict", label), timeout=30).model_spec.version.value
        except grpc.RpcError as err:
            return err.code()

    try:
        server.wait_for("SERVING")
        with Client(server.target) as client:

            def served():
                return sorted((m.name, m.version) for m in client.list_models() if m.state == "AVAILABLE")

            assert served() == [("a", 1)] and labelled("a", "canary") == grpc.StatusCode.INVALID_ARGUMENT
            write(a(1, 2, labels=(("stable", 1), ("canary", 2))), b)
            assert eventually(lambda: served() == [("a", 1), ("a", 2), ("b", 1)], 120), served()
            assert eventually(lambda: labelled("a", "canary") == 2, 10) and labelled("a", "stable") == 1
            file.write_text("model_config_list { config { name: ")  # a save caught halfway
            assert eventually(lambda: "keeping the models it listed before" in server.log.read_text(), 10)
            assert served() == [("a", 1), ("a", 2), ("b", 1)]
            write(b)
            assert eventually(lambda: served() == [("b", 1)], 30), served()
            with pytest.raises(grpc.RpcError) as err:
                client.explain(image, model="a")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert labelled("a", "stable") == grpc.StatusCode.INVALID_ARGUMENT, "its labels went with it, as in TF Serving"
            assert client.explain(image, model="b").version == 1
    finally:
        server.terminate()
    log = server.log.read_text()
    assert log.count("loading a version 1 ") == 1, "a's policy grew: version 1 stays loaded"
    assert "added b; changed a" in log and "removed a" in log and "a: no longer listed" in log


def _labels_over_tf_servings_apis(server, image):
    """The labels as TF Serving's clients ask for them: model_spec.version_label over gRPC,
    /labels/L over REST; an unknown one INVALID_ARGUMENT (400)."""
    import json
    import urllib.error

    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from tests.tfserving_requests import images_request

    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)

    def predict(label: str):
        return stub.Predict(images_request("a", image[np.newaxis], "predict", label), timeout=30).model_spec.version.value

    assert predict("stable") == 1 and predict("canary") == 2
    with pytest.raises(grpc.RpcError) as err:
        predict("beta")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label: beta" in err.value.details()
    body = json.dumps({"signature_name": "predict", "instances": [image.tolist()]}).encode()
    for label, code in (("stable", 200), ("canary", 200), ("beta", 400)):
        request = urllib.request.Request(f"{server.http}/v1/models/a/labels/{label}:predict", data=body, method="POST")
        try:
            status = urllib.request.urlopen(request, timeout=30).status
        except urllib.error.HTTPError as failed:
            status = failed.code
        assert status == code, label
    metadata = json.loads(urllib.request.urlopen(f"{server.http}/v1/models/a/labels/stable/metadata", timeout=30).read())
    assert metadata["model_spec"]["version"] == "1"


def test_a_model_base_path_is_served_under_its_model_name(exports, tmp_path):
    """TF Serving's one-model start, in its own spellings: the folder is `tiny_copy`, the
    model `renamed`; the REST port also answers TF Serving's metrics path."""
    from camserve.client import Client
    from camserve.server.ops.process import ServerProcess, free_port

    path, *_ = exports.get("functional")
    shutil.copytree(path, tmp_path / "tiny_copy" / "7")
    port, rest = free_port(), free_port()
    command = [sys.executable, "-m", "camserve", "serve", "--model_base_path", str(tmp_path / "tiny_copy"), "--model_name", "renamed"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--rest_api_port", str(rest), "--metrics-port", "0"]
    command += ["--max-batch-size", "1", "--poll-seconds", "0", "--shutdown-delay", "0"]
    server = ServerProcess(tmp_path, tmp_path / "server.log", command=command, port=port)
    try:
        server.wait_for("SERVING")
        with Client(server.target) as client:
            assert [(m.name, m.version) for m in client.list_models()] == [("renamed", 7)]
            explained = client.explain(np.zeros((models.SIZE, models.SIZE, 3), np.uint8), model="renamed")
            assert (explained.model, explained.version) == ("renamed", 7)
        text = urllib.request.urlopen(f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics", timeout=5).read().decode()
        assert 'model="renamed"' in text
    finally:
        server.terminate()
