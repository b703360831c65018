"""The `camserve` command: one subcommand per part of the product."""

import argparse
import importlib.util
import os
import sys

# `pip install camserve` is the client; these commands need an extra too. The modules each
# extra provides, as pyproject.toml's optional-dependencies list them (tests/test_packaging.py
# keeps the two in step).
EXTRAS = {
    "server": (
        "the server's dependencies",
        ("tensorflow", "keras", "h5py", "ml_dtypes", "grpc_health", "grpc_reflection", "prometheus_client", "aiohttp",
         "tensorflow_serving"),
    ),
    "plots": ("matplotlib for its plots", ("matplotlib",)),
}
NEEDS = {"export": "server", "serve": "server", "loadtest": "plots", "evaluate": "plots"}


def missing_extra(command: str) -> str | None:
    """The one-line message for a command whose extra is not installed, else None.
    Looked up, not imported, before the command starts: a load test learns it cannot
    draw its plot before it runs, not after, and a thin install gets no traceback."""
    extra = NEEDS.get(command)
    if extra is None:
        return None
    what, modules = EXTRAS[extra]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"camserve {command} needs {what}: pip install 'camserve[{extra}]' (missing: {', '.join(missing)})"


def main(argv=None) -> int:
    # TensorFlow's C++ start-up chatter hides our own progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # These modules only declare arguments: what a command needs (TensorFlow for
    # export and serve) is imported when it runs, so the client commands and every
    # --help start at once (tests/test_client_startup.py) and work in a thin install.
    from camserve.client import cli as client_cli
    from camserve.client import evaluate_cli, loadtest_cli
    from camserve.export import cli as export_cli
    from camserve.server import cli as server_cli

    parser = argparse.ArgumentParser(prog="camserve", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    export_cli.add_parser(subparsers)
    server_cli.add_parser(subparsers)
    client_cli.add_parser(subparsers)
    loadtest_cli.add_parser(subparsers)
    evaluate_cli.add_parser(subparsers)
    args = parser.parse_args(argv)
    message = missing_extra(args.command)
    if message:
        print(message, file=sys.stderr)
        return 1
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
