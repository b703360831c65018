"""One of `camserve serve --workers N`'s servers: `python -m camserve.server.worker
INDEX FD`, started by the supervisor (ops/workers.py), its options sent over FD."""

import sys

from .app import serve
from .ops.link import Link


def main(argv: list[str]) -> int:
    index, fd = argv
    link = Link(int(fd), int(index))
    return serve(link.options, link)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
