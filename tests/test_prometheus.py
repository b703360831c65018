"""deploy/prometheus/prometheus.yml in a real Prometheus (Debian's package; .ci/run
installs it): its two jobs, with only their targets pointed at a test server that
requires a bearer token, scrape the metrics port and the HTTP port's /metrics, and
what a client did comes back through Prometheus' query API. Skipped where the
binaries are missing."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from camserve.server.ops.process import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
TOKEN = "scrape-token-for-tests"
JOBS = ("camserve-metrics", "camserve-http")
NO_TOKEN = "camserve-http-no-token"  # the HTTP job less its token: must be refused
EXPLAINS = 5

pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="prometheus/promtool not installed (apt-get install prometheus; .ci/run does)",
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, "check", "config", *args], capture_output=True, text=True, timeout=60)


def test_the_deploy_config_passes_promtool_and_a_typo_does_not(tmp_path):
    checked = promtool("--syntax-only", str(CONFIG))  # its token file exists only in the cluster
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(CONFIG.read_text().replace("metrics_path:", "metrics_pth:", 1))
    refused = promtool("--syntax-only", str(broken))
    assert refused.returncode != 0 and "metrics_pth" in refused.stdout + refused.stderr


def local_config(metrics_port: int, http_port: int, token_file: Path) -> dict:
    """The deploy config with its DNS discovery replaced by the test server's ports and
    its token file by the test's; every other setting is the deploy file's."""
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert sorted(jobs) == sorted(JOBS)
    config["global"] = {**config.get("global", {}), "scrape_interval": "1s", "scrape_timeout": "1s"}
    for name, port in zip(JOBS, (metrics_port, http_port)):
        job = jobs[name]
        assert job.pop("dns_sd_configs"), name
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    jobs["camserve-http"]["authorization"]["credentials_file"] = str(token_file)
    bare = copy.deepcopy(jobs["camserve-http"])
    bare["job_name"] = NO_TOKEN
    del bare["authorization"]
    config["scrape_configs"].append(bare)
    return config


class Prometheus:
    """A Prometheus of the test's own: free port, its own storage, killed at the end."""

    def __init__(self, config: dict, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        checked = promtool(str(folder / "prometheus.yml"))  # the full check: the token file exists here
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "prometheus.log"
        self.process = subprocess.Popen(
            [
                PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )

    def query(self, promql: str) -> dict[tuple, float]:
        """{sorted labels: value} of an instant query, {} while Prometheus is not up."""
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=5) as r:
                body = json.load(r)
        except OSError:
            return {}
        assert body["status"] == "success", body
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in body["data"]["result"]}

    def by_job(self, promql: str) -> dict[str, float]:
        return {dict(labels).get("job"): value for labels, value in self.query(promql).items()}

    def wait_for(self, promql: str, condition, timeout: float = 90.0) -> dict[str, float]:
        """Polls the query until condition(its values by job) holds."""
        deadline, seen = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            seen = self.by_job(promql)
            if condition(seen):
                return seen
            time.sleep(0.2)  # a poll interval: the wait ends on the condition, not the clock
        raise TimeoutError(f"{promql}: {seen} after {timeout}s\n{self.log.read_text()[-3000:]}")

    def stop(self):
        self.process.kill()
        self.process.wait(30)


@pytest.fixture(scope="module")
def token_server(server_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prometheus_server")
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    with serving(server_repo, folder / "server.log", "--max-batch-size", "8", "--auth-token-file", str(token)) as server:
        yield server, token


def test_prometheus_scrapes_both_endpoints_with_the_deploy_config(token_server, tmp_path):
    from camserve.client import Client

    server, token = token_server
    with Client(server.target, model="tiny", token=TOKEN) as client:
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for _ in range(EXPLAINS):
            assert client.explain(image).heatmap is not None
    prometheus = Prometheus(local_config(server.metrics_port, server.http_port, token), tmp_path / "prometheus")
    try:
        # Both of the deploy file's jobs are up; the HTTP job without its token is not (401).
        up = prometheus.wait_for("up", lambda by: set(by) == {*JOBS, NO_TOKEN})
        assert up == {JOBS[0]: 1.0, JOBS[1]: 1.0, NO_TOKEN: 0.0}
        # The same counters through either endpoint: every explain the client made.
        ok = prometheus.wait_for('sum by (job) (camserve_requests_total{model="tiny",code="OK"})', lambda by: set(by) == set(JOBS))
        assert ok == {job: EXPLAINS for job in JOBS}
        lag = prometheus.wait_for("camserve_event_loop_lag_seconds", lambda by: set(by) == set(JOBS))
        assert all(math.isfinite(v) and v >= 0 for v in lag.values()), lag
    finally:
        prometheus.stop()
