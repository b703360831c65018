"""`camserve serve --repo DIR [--port 8500] ...`, or as TF Serving is started:
`--model-base-path DIR --model-name NAME`, or `--model-config-file models.config`
(TF Serving's own spellings, `--model_base_path` ..., are aliases)."""

import argparse
from pathlib import Path

from camserve import colors


def _at_least(low, kind=int):
    """An argparse type: a number of `kind`, refused below `low` with a message."""

    def parse(text: str):
        value = kind(text)
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type when the text is no number
    return parse


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="serve a model repository over gRPC and HTTP with dynamic batching")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--repo", type=Path, help="model repository folder: REPO/NAME/VERSION/")
    which.add_argument(
        "--model-base-path", "--model_base_path", dest="model_base_path", type=Path,
        help="one model's folder of VERSION/ folders, served as --model-name (TF Serving's --model_base_path)",
    )
    which.add_argument(
        "--model-config-file", "--model_config_file", dest="model_config_file", type=Path,
        help="TF Serving's ModelServerConfig in protobuf text (models.config): each model's name, absolute base_path, "
        "model_version_policy and version_labels; read once at start unless --model-config-file-poll-seconds",
    )
    p.add_argument(
        "--model-config-file-poll-seconds", "--model_config_file_poll_wait_seconds", dest="model_config_poll_seconds",
        type=_at_least(0, float), default=0.0,
        help="with --model-config-file: how often to read it again when it changed, loading the models it adds, "
        "unloading those it drops, applying changed policies and labels (a file that no longer reads keeps the "
        "last good list); 0: read once (TF Serving's --model_config_file_poll_wait_seconds)",
    )
    p.add_argument(
        "--model-name", "--model_name", dest="model_name",
        help="with --model-base-path: the name the model is served under (default: default, as TF Serving's)",
    )
    p.add_argument("--model", dest="models", action="append", help="with --repo: serve only this model (repeatable)")
    p.add_argument(
        "--version-policy", choices=["latest", "all", "specific"], default="latest",
        help="which versions to serve, unless a model's config.json or models.config entry says",
    )
    p.add_argument("--versions", type=int, nargs="+", default=[], help="with --version-policy specific")
    p.add_argument(
        "--poll-seconds", "--file_system_poll_wait_seconds", dest="poll_seconds", type=_at_least(0, float), default=5.0,
        help="how often to look for new versions; 0: never",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8500, help="gRPC: camserve's API, KServe v2 (TF Serving's gRPC port too)")
    p.add_argument(
        "--http-port", "--rest-api-port", "--rest_api_port", dest="http_port", type=int, default=8000,
        help="HTTP: KServe v2, explain by upload, the page at / and /metrics (Triton's HTTP port; TF Serving's "
        "--rest_api_port, whose 8501 turns the separate --metrics-port off unless it is given); 0 turns it off",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None,
        help="Prometheus metrics on their own address (default 8501, or off when --http-port is 8501: that port "
        "serves /metrics and /monitoring/prometheus/metrics itself); 0 turns it off",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint binds (0.0.0.0: all)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument(
        "--batch-wait-ms", "--batch-timeout-ms", dest="batch_wait_ms", type=float, default=5.0,
        help="longest a batch waits for requests already admitted and still being decoded (never for requests yet to arrive)",
    )
    p.add_argument("--max-enqueued", type=int, default=256, help="waiting requests per model before RESOURCE_EXHAUSTED")
    p.add_argument("--allowed-batch-sizes", type=int, nargs="+", help="the padding ladder (default: powers of two)")
    p.add_argument(
        "--stream-window", type=_at_least(1), help="requests one stream may have in flight (default: max batch size, at most max enqueued)"
    )
    p.add_argument(
        "--default-timeout-s", type=_at_least(0, float), default=60.0,
        help="deadline of a call that brings none (gRPC without a deadline, HTTP without timeout_ms); 0: none",
    )
    p.add_argument("--max-message-mb", type=_at_least(0.001, float), default=64.0)
    p.add_argument("--max-pixels", type=_at_least(1), default=40_000_000, help="largest decoded image, in pixels")
    p.add_argument(
        "--background", type=colors.rgb, default="FFFFFF", metavar="RRGGBB",
        help="hex colour transparent pixels are composited onto, unless a request sets its own (default: white)",
    )
    p.add_argument("--max-concurrent-rpcs", type=_at_least(1), default=1000, help="calls (streams count once) before RESOURCE_EXHAUSTED")
    p.add_argument(
        "--http-body-timeout", type=_at_least(0.001, float), default=30.0,
        help="seconds an HTTP request's body may take to arrive once its headers have (408 beyond, and its place is freed)",
    )
    p.add_argument("--max-connection-age", type=_at_least(1, float), default=300.0, help="seconds before a connection is closed so clients re-resolve")
    p.add_argument("--max-connection-age-grace", type=_at_least(0, float), default=30.0, help="seconds a closing connection's calls get to finish")
    p.add_argument(
        "--workers", type=_at_least(1), default=1,
        help="server processes sharing the port, each with its own copy of the models (the request path on N cores)",
    )
    p.add_argument("--batches-in-flight", type=_at_least(0), default=0, help="batches on the device at once (default: 2 on a GPU, 1 on a CPU)")
    p.add_argument("--decode-threads", type=_at_least(0), default=0, help="decode/resize threads (default: the CPUs usable)")
    p.add_argument("--intra-op-threads", type=_at_least(0), default=0, help="TensorFlow intra-op threads (default: the CPUs usable)")
    p.add_argument("--inter-op-threads", type=_at_least(0), default=0, help="TensorFlow inter-op threads (default: the CPUs usable)")
    p.add_argument("--shutdown-delay", type=_at_least(0, float), default=1.0, help="seconds of NOT_SERVING before refusing calls")
    p.add_argument("--drain-timeout", type=_at_least(0, float), default=30.0, help="seconds accepted calls get to finish")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mutual TLS)")
    p.add_argument("--auth-token-file", type=Path, help="require 'authorization: Bearer <token>' (default: $CAMSERVE_AUTH_TOKEN)")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys

    from .pipeline.batcher import BatchingOptions
    from .models.config import ModelConfig, VersionPolicy
    from .options import ServerOptions
    from .pipeline.limits import Limits
    from .transports.security import SecurityOptions

    batching = BatchingOptions(
        max_batch_size=args.max_batch_size,
        batch_wait=args.batch_wait_ms / 1e3,
        max_enqueued=args.max_enqueued,
        allowed_batch_sizes=tuple(args.allowed_batch_sizes or ()),
    )
    try:
        if args.workers > 1 and args.port == 0:
            raise ValueError("--workers shares one port: give --port a number, not 0")
        metrics_port = _metrics_port(args.metrics_port, args.http_port)
        _check_models(args)
        batching.check()
        defaults = ModelConfig(batching, VersionPolicy(args.version_policy, tuple(args.versions)), batches_in_flight=args.batches_in_flight)
        security = SecurityOptions.from_args(args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_token_file)
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        print(f"camserve serve: error: {err}", file=sys.stderr)
        return 2
    max_message_bytes = int(args.max_message_mb * 1024 * 1024)
    options = ServerOptions(
        repo=args.repo,
        models=args.models,
        model_base_path=args.model_base_path and args.model_base_path.absolute(),
        model_name=args.model_name or "default",
        model_config_file=args.model_config_file and args.model_config_file.absolute(),
        model_config_poll_seconds=args.model_config_poll_seconds,
        model_defaults=defaults,
        poll_seconds=args.poll_seconds,
        security=security,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        metrics_port=metrics_port,
        metrics_host=args.metrics_host,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        http_body_timeout=args.http_body_timeout,
        max_connection_age=args.max_connection_age,
        max_connection_age_grace=args.max_connection_age_grace,
        decode_threads=args.decode_threads,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        limits=Limits(
            max_pixels=args.max_pixels,
            max_response_bytes=max_message_bytes,
            background=args.background,
            default_timeout_s=args.default_timeout_s,
            # One stream alone fills a batch but never the queue: it is held back, not shed.
            stream_window=args.stream_window or min(args.max_batch_size, args.max_enqueued),
        ),
        max_message_bytes=max_message_bytes,
        shutdown_delay=args.shutdown_delay,
        drain_timeout=args.drain_timeout,
    )
    if args.workers > 1:  # the supervisor never imports TensorFlow
        from .ops.workers import supervise

        return supervise(options, args.workers)
    from .app import serve  # the whole server: only once the flags are known good

    return serve(options)


TF_SERVING_REST_PORT = 8501
METRICS_PORT = 8501


def _metrics_port(given: int | None, http_port: int) -> int:
    """The separate metrics endpoint's port. Its default, 8501, is TF Serving's REST port:
    when the HTTP port takes it, the metrics endpoint is off (the HTTP port serves /metrics)."""
    if given is None:
        return 0 if http_port == TF_SERVING_REST_PORT else METRICS_PORT
    if given and given == http_port:
        raise ValueError(
            f"--metrics-port {given} is also the --http-port: the HTTP port serves /metrics itself; "
            "give --metrics-port 0 (off) or another port"
        )
    return given


def _check_models(args):
    """The models' flags agree, and a models.config reads: checked before anything starts
    (the server process reads the file again; its config protos need no TensorFlow)."""
    if args.model_name is not None and args.model_base_path is None:
        raise ValueError("--model-name names the model of --model-base-path; give that too")
    if args.models and args.repo is None:
        raise ValueError("--model picks models of a --repo; with --model-config-file, list them in the file")
    if args.model_config_poll_seconds and args.model_config_file is None:
        raise ValueError("--model-config-file-poll-seconds says how often to read --model-config-file; give that too")
    if args.model_base_path is not None and not args.model_base_path.is_dir():
        raise ValueError(f"--model-base-path {args.model_base_path} is not a folder")
    if args.model_config_file is not None:
        from .models import tfserving_config

        for source in tfserving_config.load(args.model_config_file):
            if not source.base_path.is_dir():
                raise ValueError(f"{args.model_config_file}: model {source.name!r}: base_path {source.base_path} is not a folder")
