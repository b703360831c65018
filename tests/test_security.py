"""Mutual TLS and bearer tokens on a real server; health stays open to probes."""

import subprocess

import grpc
import numpy as np
import pytest

from camserve.client import Client
from camserve.server.ops.process import ServerProcess
from tests import models

TOKEN = "s3cret-token-for-tests"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=camserve test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    (d / "token").write_text(TOKEN + "\n")
    return d


@pytest.fixture(scope="module")
def secure_server(server_repo, pki, tmp_path_factory):
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    process = ServerProcess(
        server_repo,
        tmp_path_factory.mktemp("logs") / "secure.log",
        *("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")),
        *("--tls-client-ca", str(pki / "ca.pem"), "--auth-token-file", str(pki / "token"), "--max-batch-size", "1"),
        credentials=credentials,
    )
    process.wait_for("SERVING")  # health needs no token
    yield process
    process.terminate()


IMAGE = np.zeros((models.SIZE, models.SIZE, 3), np.uint8)


def client(server, pki, **overrides):
    options = dict(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key", token=TOKEN, retries=0, timeout=10)
    options.update(overrides)
    return Client(server.target, model="tiny", **options)


def test_certificate_and_token_get_answers(secure_server, pki):
    with client(secure_server, pki) as c:
        assert c.explain(IMAGE).class_index >= 0


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
def test_missing_or_wrong_token_is_unauthenticated(secure_server, pki, token):
    with client(secure_server, pki, token=token) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.explain(IMAGE)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            c.list_models()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_without_client_certificate_or_tls_no_call_gets_through(secure_server, pki):
    with client(secure_server, pki, cert=None, key=None) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.explain(IMAGE)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with Client(secure_server.target, model="tiny", token=TOKEN, retries=0, timeout=10) as plaintext:
        with pytest.raises(grpc.RpcError) as err:
            plaintext.explain(IMAGE)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_cli_takes_the_same_options(secure_server, pki, tmp_path):
    import cv2
    import sys

    path = tmp_path / "x.png"
    cv2.imwrite(str(path), IMAGE)
    base = [sys.executable, "-m", "camserve", "explain", str(path), "--target", secure_server.target, "--out", str(tmp_path)]
    tls = ["--ca", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
    ok = subprocess.run([*base, *tls, "--token-file", str(pki / "token")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-1500:]
    denied = subprocess.run([*base, *tls], capture_output=True, text=True, timeout=120)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr


def https(server, pki, path, token=TOKEN, cert=True, method="GET", body=None):
    """(status, body, headers) of one HTTPS request to the server's HTTP port."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=pki / "ca.pem")
    if cert:
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
    connection = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def test_http_takes_the_same_certificates_and_token(secure_server, pki):
    import json
    import ssl
    import urllib.request

    infer = json.dumps({"inputs": [{"name": "images", "shape": [1, *IMAGE.shape], "datatype": "UINT8", "data": IMAGE.ravel().tolist()}]})
    status, body, _ = https(secure_server, pki, "/v2/models/tiny/infer", method="POST", body=infer)
    assert status == 200 and json.loads(body)["model_name"] == "tiny"
    for token in (None, "wrong", TOKEN + "x"):
        status, body, headers = https(secure_server, pki, "/v2/models/tiny", token=token)
        assert status == 401 and "bearer token" in json.loads(body)["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert https(secure_server, pki, "/camserve/models", token=token)[0] == 401
    # Probes carry no secrets, and the page asks for the token itself.
    assert https(secure_server, pki, "/v2/health/ready", token=None)[0] == 200
    assert https(secure_server, pki, "/", token=None)[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):  # mutual TLS: no client certificate, no answer
        https(secure_server, pki, "/v2/health/ready", cert=False)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # and no plaintext
        urllib.request.urlopen(f"http://127.0.0.1:{secure_server.http_port}/v2/health/ready", timeout=10)


def test_tf_servings_apis_take_the_same_certificates_and_token(secure_server, pki):
    """TF Serving's clients add the token as gRPC metadata or an HTTP header and the
    certificates to their channel; without the token, neither dialect answers."""
    import json

    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc

    from tests.tfserving_requests import images_request

    request = images_request("tiny", IMAGE[np.newaxis], "predict")
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "tiny"
    credentials = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes())
    with grpc.secure_channel(secure_server.target, credentials) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        assert set(predict(request, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")]).outputs) == {"logits", "probabilities", "class_index"}
        for rpc, message in ((predict, request), (model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, status)):
            with pytest.raises(grpc.RpcError) as err:
                rpc(message, timeout=30, metadata=[("authorization", "Bearer wrong")])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    body = json.dumps({"signature_name": "predict", "instances": [IMAGE.tolist()]})
    ok, answer, _ = https(secure_server, pki, "/v1/models/tiny:predict", method="POST", body=body)
    assert ok == 200 and len(json.loads(answer)["predictions"]) == 1
    for path, method in (("/v1/models/tiny:predict", "POST"), ("/v1/models/tiny", "GET"), ("/v1/models/tiny/metadata", "GET")):
        assert https(secure_server, pki, path, token=None, method=method, body=body if method == "POST" else None)[0] == 401
