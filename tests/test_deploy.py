"""deploy/ checked offline, as far as it can be without a cluster.

- Schemas: every YAML document of every file under deploy/ is validated against
  the Kubernetes 1.37 OpenAPI schemas that kubernetes-validate bundles, in their
  strict form (an unknown field is an error, as `kubectl apply`'s default strict
  field validation makes it). A kind with no bundled schema is an error too, not
  a warning. KServe's InferenceService is a CRD with no bundled schema: it is
  checked against INFERENCE_SERVICE below, built from the same definitions (the
  predictor is a core/v1 PodSpec plus KServe's component fields, as KServe's Go
  type inlines them), so its pod fields and containers are checked as strictly
  as a Deployment's; KServe's own fields are checked by name and simple type,
  the framework specs (sklearn, triton, ...) and transformer/explainer only as
  objects. Not checked: anything an API server or admission webhook decides
  (names resolving, image existence, KServe's "exactly one predictor" rule).
- Arguments: every container that runs the camserve image has its command line
  (Dockerfile ENTRYPOINT + args, or its own command) parsed by camserve's own
  argparse parser, with flags spelt in full; its ports, probes, drain time and
  worst-case memory are checked against the parsed values, and so are the
  Dockerfile's EXPOSE, the Service, the Prometheus scrape config's ports and
  the figures the READMEs state.

test_a_broken_copy_fails shows each check failing on a copy with one mistake."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.37.0"  # the newest kubernetes-validate 1.37.0 bundles
# YAML under deploy/ that is not a Kubernetes object, and what checks it instead.
NOT_KUBERNETES = {"prometheus/prometheus.yml": "promtool, in tests/test_prometheus.py"}
IMAGE = "camserve:"
# An idle server with TensorFlow and the demo model (benchmarks/README.md section 5:
# 850 MB RSS at saturation); the README's bound is what requests add above it.
IDLE_SERVER = 2**30
MODEL_HW = (224, 224)  # the queue term for an ImageNet-sized model, larger than the demo's
RESERVE = 8  # calls per port kept free beside the promised callers (deploy/README.md)
LIVENESS = "camserve.liveness"


# ---------------------------------------------------------------- schemas


def _inference_service_schema() -> dict:
    definitions = kubernetes_validate.schema_contents(f"kubernetes-json-schema/v{KUBERNETES}-local-strict/_definitions.json", KUBERNETES)
    defs = definitions["$defs"]

    def ref(name):
        return {"$ref": f"#/$defs/{name}"}

    count = {"type": "integer", "minimum": 0}
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    # KServe's ComponentExtensionSpec (pkg/apis/serving/v1beta1/component.go).
    extension = {
        "minReplicas": count, "maxReplicas": count, "scaleTarget": count,
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "containerConcurrency": count, "timeout": count,
        "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
        "logger": {"type": "object"}, "batcher": {"type": "object"},
        "labels": strings, "annotations": strings,
        "deploymentStrategy": ref("io.k8s.api.apps.v1.DeploymentStrategy"),
    }
    frameworks = ("sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm", "paddle", "model", "workerSpec")
    storage_uri = {
        "type": "object", "required": ["uri"], "additionalProperties": False,
        "properties": {"uri": {"type": "string", "minLength": 1}, "mountPath": {"type": "string", "pattern": "^/"}},
    }
    # PodSpec's properties keep their "#/$defs/..." references: the schema carries the $defs.
    predictor = {
        "type": "object", "additionalProperties": False,
        "properties": {
            **defs["io.k8s.api.core.v1.PodSpec"]["properties"], **extension, **{f: {"type": "object"} for f in frameworks},
            "storageUris": {"type": "array", "minItems": 1, "items": storage_uri},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": ref("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
            "spec": {
                "type": "object", "required": ["predictor"], "additionalProperties": False,
                "properties": {"predictor": predictor, "transformer": {"type": "object"}, "explainer": {"type": "object"}},
            },
            "status": {"type": "object"},
        },
    }


INFERENCE_SERVICE = _inference_service_schema()


def yaml_files(deploy: Path) -> list[Path]:
    return sorted(p for p in deploy.rglob("*") if p.suffix in (".yaml", ".yml"))


def manifests(deploy: Path):
    """(file, document) for every Kubernetes document under deploy/."""
    for path in yaml_files(deploy):
        if path.relative_to(deploy).as_posix() not in NOT_KUBERNETES:
            for doc in yaml.safe_load_all(path.read_text()):
                if doc is not None:
                    yield path.relative_to(deploy), doc


def _where(error) -> str:
    return ".".join(map(str, error.absolute_path)) or "(top)"


def schema_problems(deploy: Path) -> list[str]:
    problems = []
    for path in yaml_files(deploy):
        name = path.relative_to(deploy).as_posix()
        if name in NOT_KUBERNETES:
            continue
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        if not docs or not all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in docs):
            problems.append(f"{name}: not Kubernetes objects (list it in NOT_KUBERNETES with what checks it)")
    for path, doc in manifests(deploy):
        what = f"{path} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "InferenceService":
            validator = jsonschema.Draft202012Validator(INFERENCE_SERVICE)
            problems += [f"{what}: {_where(e)}: {e.message}" for e in validator.iter_errors(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{what}: {_where(err)}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{what}: {err.message}")
    return problems


# ---------------------------------------------------------------- arguments


class Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print and exit
        raise Refused(message)


def camserve_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `camserve` command's parser as camserve/cli.py builds it."""
    from camserve.client import cli as client_cli
    from camserve.client import evaluate_cli, loadtest_cli
    from camserve.export import cli as export_cli
    from camserve.server import cli as server_cli

    parser = _Parser(prog="camserve")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (export_cli, server_cli, client_cli, loadtest_cli, evaluate_cli):
        module.add_parser(subparsers)
    return parser, subparsers.choices


def parse(argv: list[str]) -> argparse.Namespace:
    """argv after `camserve`, as camserve would parse it; flags must be spelt in full
    (argparse takes a prefix, which breaks once another flag shares it)."""
    parser, commands = camserve_parser()
    if not argv or argv[0] not in commands:
        raise Refused(f"not a camserve command: {argv[:1]}")
    flags = {s for action in commands[argv[0]]._actions for s in action.option_strings}
    abbreviated = [a for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in flags]
    if abbreviated:
        raise Refused(f"unknown (or abbreviated) flags {abbreviated}")
    return parser.parse_args(argv)


def dockerfile(deploy: Path) -> tuple[list[str], set[int]]:
    """The ENTRYPOINT and the EXPOSEd ports."""
    text = (deploy / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M).group(1))
    exposed = {int(p) for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.M) for p in line.split()}
    return entrypoint, exposed


def pod_specs(deploy: Path):
    """(where, pod spec, pod annotations) of every pod the manifests run."""
    for path, doc in manifests(deploy):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Deployment":
            template = doc["spec"]["template"]
            yield f"{path} {kind}/{name}", template["spec"], template.get("metadata", {}).get("annotations", {})
        elif kind == "InferenceService":  # the predictor is a PodSpec, inlined
            yield f"{path} {kind}/{name}", doc["spec"]["predictor"], doc["spec"]["predictor"].get("annotations", {})


def serve_containers(deploy: Path):
    """(where, pod spec, annotations, container, parsed args) of every container
    running `camserve serve`; containers running another camserve command are
    parsed too, and a refusal is a problem."""
    entrypoint, _ = dockerfile(deploy)
    for where, pod, annotations in pod_specs(deploy):
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if not container.get("image", "").startswith(IMAGE):
                continue
            argv = [*(container.get("command") or entrypoint), *container.get("args", [])]
            label = f"{where} container {container['name']}"
            if argv[0] != "camserve":
                yield label, pod, annotations, container, Refused(f"runs {argv[0]}, not camserve")
                continue
            try:
                yield label, pod, annotations, container, parse(argv[1:])
            except Refused as err:
                yield label, pod, annotations, container, err


def memory_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "": 1}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(quantity)).groups()
    return float(number) * units[unit or ""]


def request_path_bound(args) -> float:
    """README, Serve: max_concurrent_rpcs x max_message x 4 (twice with the HTTP port)
    + decode_threads x max_pixels x 16 B + (max_enqueued + max_batch_size) x H x W x 3 + 64 MB."""
    ports = 2 if args.http_port else 1
    h, w = MODEL_HW
    return (
        ports * args.max_concurrent_rpcs * int(args.max_message_mb * 2**20) * 4
        + args.decode_threads * args.max_pixels * 16
        + (args.max_enqueued + args.max_batch_size) * h * w * 3
        + 64 * 2**20
    )


def _probe_problems(label, container, args) -> list[str]:
    problems = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        if "grpc" not in probe:
            problems.append(f"{label}: {kind} is not a gRPC health probe")
            continue
        if probe["grpc"]["port"] != args.port:
            problems.append(f"{label}: {kind} probes port {probe['grpc']['port']}, camserve serves gRPC on {args.port}")
        # Readiness is "" (NOT_SERVING through warm-up and drain); liveness on "" would restart a draining pod.
        service, wanted = probe["grpc"].get("service", ""), "" if kind == "readinessProbe" else LIVENESS
        if service != wanted:
            problems.append(f"{label}: {kind} asks health service {service!r}, not {wanted!r}")
    return problems


def argument_problems(deploy: Path) -> list[str]:
    problems = []
    entrypoint, exposed = dockerfile(deploy)
    try:
        image = parse(entrypoint[1:])
        ports = {image.port, image.http_port, image.metrics_port} - {0}
        if exposed != ports:
            problems.append(f"Dockerfile: EXPOSE {sorted(exposed)}, but its ENTRYPOINT serves {sorted(ports)}")
    except Refused as err:
        problems.append(f"Dockerfile: ENTRYPOINT refused by camserve: {err}")
    named_ports: dict[str, int] = {}
    for label, pod, annotations, container, args in serve_containers(deploy):
        named_ports.update({port.get("name", ""): port["containerPort"] for port in container.get("ports", [])})
        if isinstance(args, Refused):
            problems.append(f"{label}: refused by camserve: {args}")
            continue
        if args.command != "serve":
            continue
        serving = {args.port, args.http_port, args.metrics_port} - {0}
        for port in container.get("ports", []):
            if port["containerPort"] not in serving:
                problems.append(f"{label}: declares port {port['containerPort']}, camserve serves on {sorted(serving)}")
        problems += _probe_problems(label, container, args)
        grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
        if grace <= args.shutdown_delay + args.drain_timeout:
            problems.append(f"{label}: terminationGracePeriodSeconds {grace} <= --shutdown-delay + --drain-timeout")
        if annotations.get("prometheus.io/scrape") == "true":
            if int(annotations.get("prometheus.io/port", -1)) != args.metrics_port or args.metrics_host != "0.0.0.0":
                problems.append(f"{label}: the scrape annotation names port {annotations.get('prometheus.io/port')}, metrics are on {args.metrics_host}:{args.metrics_port}")
        limit = container.get("resources", {}).get("limits", {}).get("memory")
        if limit is None:
            problems.append(f"{label}: no memory limit")
        elif args.decode_threads == 0:
            problems.append(f"{label}: --decode-threads follows the node's cores: the memory bound needs a number")
        elif (need := request_path_bound(args) + IDLE_SERVER) > memory_bytes(limit):
            problems.append(f"{label}: the request path's worst case plus an idle server is {need / 2**30:.2f} GiB, over the limit {limit}")
    for path, doc in manifests(deploy):
        if doc["kind"] == "Service":
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if target not in named_ports and target not in named_ports.values():
                    problems.append(f"{path} Service/{doc['metadata']['name']}: targetPort {target!r} is no port of a camserve pod")
    return problems


def _deployment_args(deploy: Path) -> argparse.Namespace:
    """The parsed arguments of the Deployment's (one) serving container."""
    (args,) = [a for label, pod, _, container, a in serve_containers(deploy) if "Deployment/" in label and container in pod["containers"]]
    if isinstance(args, Refused):
        raise AssertionError(f"the Deployment's camserve serve arguments are refused: {args}")
    return args


def scrape_problems(deploy: Path) -> list[str]:
    """The scrape config's jobs reach the Deployment's metrics and HTTP ports through its Service."""
    args = _deployment_args(deploy)
    services = [doc for _, doc in manifests(deploy) if doc["kind"] == "Service"]
    config = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    wanted = {"camserve-metrics": args.metrics_port, "camserve-http": args.http_port}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    problems = [f"prometheus.yml: no job {name}" for name in wanted if name not in jobs]
    for name, port in wanted.items():
        for sd in jobs.get(name, {}).get("dns_sd_configs", []):
            if sd.get("port") != port:
                problems.append(f"prometheus.yml: job {name} scrapes port {sd.get('port')}, the Deployment serves it on {port}")
            for host in sd["names"]:
                service = host.split(".")[0]
                if not any(s["metadata"]["name"] == service and port in [p["port"] for p in s["spec"]["ports"]] for s in services):
                    problems.append(f"prometheus.yml: job {name} resolves {host}: no Service {service} with port {port}")
    if "credentials_file" not in jobs.get("camserve-http", {}).get("authorization", {}):
        problems.append("prometheus.yml: job camserve-http sends no token (authorization: credentials_file)")
    return problems


def readme_problems(deploy: Path) -> list[str]:
    """The figures README.md and deploy/README.md state are the Deployment's."""
    args = _deployment_args(deploy)
    problems = []
    example = re.search(r"(\d) ports x (\d+) calls x (\d+(?:\.\d+)?) MB x 4", (ROOT / "README.md").read_text())
    stated = example and (int(example[1]), int(example[2]), float(example[3]))
    if stated != (2 if args.http_port else 1, args.max_concurrent_rpcs, args.max_message_mb):
        problems.append(f"README.md's worked example {example and example[0]!r} is not the Deployment's flags")
    text = (deploy / "README.md").read_text()
    limit = re.search(r"`--max-concurrent-rpcs (\d+)`", text)
    if not limit or int(limit[1]) != args.max_concurrent_rpcs:
        problems.append(f"deploy/README.md states {limit and limit[0]!r}, the Deployment sets {args.max_concurrent_rpcs}")
    promise = re.search(r"\*\*(\d+) callers at once\*\*", text)
    if not promise or int(promise[1]) + RESERVE > args.max_concurrent_rpcs:
        problems.append(f"deploy/README.md promises {promise and promise[0]!r}: with {RESERVE} spare that needs more than {args.max_concurrent_rpcs} calls")
    return problems


# ---------------------------------------------------------------- tests


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    assert {p.relative_to(DEPLOY).as_posix() for p in yaml_files(DEPLOY)} >= {
        "kubernetes/camserve.yaml", "kserve/inferenceservice.yaml", *NOT_KUBERNETES
    }
    kinds = sorted(doc["kind"] for _, doc in manifests(DEPLOY))
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "InferenceService", "Service"]
    assert schema_problems(DEPLOY) == []


def test_container_arguments_are_camserve_flags_and_ports_probes_and_memory_agree():
    assert argument_problems(DEPLOY) == []
    parsed = [(label, args.command) for label, *_, args in serve_containers(DEPLOY)]
    assert sorted(command for _, command in parsed) == ["export", "serve", "serve"], parsed


def test_scrape_config_reaches_the_deployments_metrics_and_http_ports():
    assert scrape_problems(DEPLOY) == []


def test_the_readmes_figures_are_the_deployments():
    assert readme_problems(DEPLOY) == []


CHECKS = {"schema": schema_problems, "arguments": argument_problems, "scrape": scrape_problems, "readme": readme_problems}


@pytest.mark.parametrize(
    "check, file, old, new, message",
    [
        ("schema", "kubernetes/camserve.yaml", "readinessProbe:", "readinesProbe:", "readinesProbe"),
        ("schema", "kubernetes/camserve.yaml", "containerPort: 8500}", "containerPort: grpc}", "containerPort"),
        ("schema", "kubernetes/camserve.yaml", "apiVersion: autoscaling/v2", "apiVersion: autoscaling/v9", "Couldn't find schema"),
        ("schema", "kubernetes/camserve.yaml", "  clusterIP: None", "  clusterIp: None", "clusterIp"),
        ("schema", "kserve/inferenceservice.yaml", "    minReplicas: 1", "    minReplica: 1", "minReplica"),
        ("schema", "kserve/inferenceservice.yaml", "        readinessProbe:", "        readynessProbe:", "readynessProbe"),
        ("schema", "kserve/inferenceservice.yaml", "  predictor:", "  predicter:", "predicter"),
        ("arguments", "kubernetes/camserve.yaml", '"--max-concurrent-rpcs"', '"--max-concurent-rpcs"', "unknown (or abbreviated) flags"),
        ("arguments", "kubernetes/camserve.yaml", '"--max-concurrent-rpcs"', '"--max-concurrent"', "abbreviated"),
        ("arguments", "kubernetes/camserve.yaml", '"--max-concurrent-rpcs", "32"', '"--max-concurrent-rpcs", "0"', "must be at least 1"),
        ("arguments", "kubernetes/camserve.yaml", '"export", "demo"', '"exports", "demo"', "not a camserve command"),
        ("arguments", "kserve/inferenceservice.yaml", '"--shutdown-delay", "5"', '"--shutdown-dely", "5"', "--shutdown-dely"),
        ("arguments", "kubernetes/camserve.yaml", "{name: metrics, containerPort: 8501}", "{name: metrics, containerPort: 9090}", "declares port 9090"),
        ("arguments", "kubernetes/camserve.yaml", "grpc: {port: 8500, service: camserve.liveness}\n            periodSeconds: 10",
         "grpc: {port: 8500}\n            periodSeconds: 10", "livenessProbe asks health service ''"),
        ("arguments", "kubernetes/camserve.yaml", "grpc: {port: 8500}", "grpc: {port: 8501}", "readinessProbe probes port 8501"),
        ("arguments", "kubernetes/camserve.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30"),
        ("arguments", "kserve/inferenceservice.yaml", "    terminationGracePeriodSeconds: 45\n", "", "terminationGracePeriodSeconds 30"),
        ("arguments", "kubernetes/camserve.yaml", '"--max-message-mb", "8"', '"--max-message-mb", "16"', "over the limit 4Gi"),
        ("arguments", "kubernetes/camserve.yaml", '"--decode-threads", "2", ', "", "--decode-threads follows the node's cores"),
        ("arguments", "kubernetes/camserve.yaml", 'prometheus.io/port: "8501"', 'prometheus.io/port: "8000"', "the scrape annotation"),
        ("arguments", "kubernetes/camserve.yaml", "targetPort: metrics}", "targetPort: metric}", "targetPort 'metric'"),
        ("arguments", "Dockerfile", "EXPOSE 8500 8000 8501", "EXPOSE 8500 8000", "EXPOSE [8000, 8500]"),
        ("arguments", "Dockerfile", '"--metrics-port", "8501"', '"--metric-port", "8501"', "ENTRYPOINT refused"),
        ("scrape", "prometheus/prometheus.yml", "port: 8501", "port: 9100", "scrapes port 9100"),
        ("scrape", "prometheus/prometheus.yml", "[camserve-headless.default", "[camserve.default", "no Service camserve"),
        ("scrape", "prometheus/prometheus.yml", "credentials_file:", "credentials_fil:", "sends no token"),
        ("readme", "kubernetes/camserve.yaml", '"--max-concurrent-rpcs", "32"', '"--max-concurrent-rpcs", "31"', "README.md's worked example"),
        ("readme", "README.md", "**24 callers at once**", "**30 callers at once**", "promises '**30 callers at once**'"),
    ],
)
def test_a_broken_copy_fails(tmp_path, check, file, old, new, message):
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    text = (copy / file).read_text()
    assert old in text, f"{file} no longer has {old!r}: update this case"
    (copy / file).write_text(text.replace(old, new, 1))
    problems = CHECKS[check](copy)
    assert any(message in p for p in problems), problems
