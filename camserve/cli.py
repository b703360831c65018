"""The `camserve` command: one subcommand per part of the product."""

import argparse
import os
import sys


def main(argv=None) -> int:
    # TensorFlow's C++ start-up chatter hides our own progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # These modules only declare arguments: what a command needs (TensorFlow for
    # export and serve) is imported when it runs, so the client commands and every
    # --help start at once (tests/test_client_startup.py).
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
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
