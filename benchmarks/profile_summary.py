"""Where a py-spy profile's samples go: `py-spy record --format raw` (collapsed
stacks) in, the threads, the heaviest frames by self and by inclusive samples out.

    python benchmarks/profile_summary.py PROFILE.txt [--top 25] [--match handler.py ...]
"""

import argparse
import re
from collections import Counter


# Leaves of a thread that sleeps: an idle pool worker, the event loop's poll, a lock wait.
WAITING = ("epoll_wait", "poll (libc", "PyThread_acquire_lock", "_queue_SimpleQueue_get", "sem_wait", "pthread_cond_wait", "futex")


def frames(stack: str) -> list[str]:
    # "function (file.py:line)" -> "function (file.py)": lines of one function merge
    return [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", nargs="*", default=[], help="also report the inclusive share of frames containing these")
    parser.add_argument("--only", help="keep only the stacks through a frame containing this (e.g. run_forever: the event loop)")
    args = parser.parse_args()
    threads, own, inclusive, total = Counter(), Counter(), Counter(), 0
    for line in open(args.profile):
        stack, _, count = line.rstrip().rpartition(" ")
        count = int(count)
        names = frames(stack)
        if any(any(w in name for w in WAITING) for name in names[-3:]):
            continue  # a thread waiting for work is not where the time goes
        if args.only and not any(args.only in name for name in names):
            continue
        total += count
        threads[names[0].split(" ")[0] if names else "?"] += count
        own[names[-1]] += count
        for name in set(names[1:]):
            inclusive[name] += count
    print(f"{total} busy samples")
    print("\nthreads:")
    for name, n in threads.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nself (where the CPU is):")
    for name, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name[:140]}")
    print("\ninclusive:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name[:140]}")
    for pattern in args.match:
        n = max((c for name, c in inclusive.items() if pattern in name), default=0)
        print(f"  {100 * n / total:5.1f}%  (largest frame matching {pattern!r})")


if __name__ == "__main__":
    main()
