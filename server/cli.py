"""`camserve serve --repo DIR [--port 8500] ...`"""

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
    p.add_argument("--repo", required=True, type=Path, help="model repository folder")
    p.add_argument("--model", dest="models", action="append", help="serve only this model (repeatable)")
    p.add_argument("--version-policy", choices=["latest", "all", "specific"], default="latest")
    p.add_argument("--versions", type=int, nargs="+", default=[], help="with --version-policy specific")
    p.add_argument("--poll-seconds", type=_at_least(0, float), default=5.0, help="how often to look for new versions; 0: never")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument(
        "--http-port", type=int, default=8000,
        help="KServe v2 over HTTP, explain by upload, and the page at / (Triton's HTTP port); 0 turns it off",
    )
    p.add_argument("--metrics-port", type=int, default=8501, help="Prometheus metrics over HTTP; 0 turns it off")
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
        batching.check()
        defaults = ModelConfig(batching, VersionPolicy(args.version_policy, tuple(args.versions)), batches_in_flight=args.batches_in_flight)
        security = SecurityOptions.from_args(args.tls_cert, args.tls_key, args.tls_client_ca, args.auth_token_file)
    except (ValueError, OSError) as err:
        print(f"camserve serve: error: {err}", file=sys.stderr)
        return 2
    max_message_bytes = int(args.max_message_mb * 1024 * 1024)
    options = ServerOptions(
        repo=args.repo,
        models=args.models,
        model_defaults=defaults,
        poll_seconds=args.poll_seconds,
        security=security,
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
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
