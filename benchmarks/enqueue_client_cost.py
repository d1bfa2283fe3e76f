"""Client instructions per enqueued job on the Redis sync path, with the I/O left out.

    python benchmarks/enqueue_client_cost.py                 # all modes, under callgrind
    PYTHONPATH=<other checkout>/src python benchmarks/enqueue_client_cost.py   # a baseline

Counts the Python process's instructions (valgrind's callgrind) for ``N`` and ``2N`` jobs
and prints the difference per job, so start-up and imports cancel out. Everything up to
the socket runs as in a real call (validation, JSON, the id, the row, the script's
arguments, the packed command, the handle); the send and the reply are replaced by a
stub that answers the ids it was sent, so no server is needed and the figure is the
client's own work. Unlike CPU time, instruction counts do not move with the machine's
load. Modes: ``single`` (``task.enqueue("n")``), ``by_name``
(``app.enqueue("bench.noop", args=["n"], tenant=None)``, as the peers harness calls it),
``many_s`` (``enqueue_many`` of 1,000 ``task.s("n")``) and ``many_map`` (of 1,000
``{"task": ..., "args": [...]}`` mappings).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

MODES = ("single", "by_name", "many_s", "many_map")


def run_jobs(mode: str, jobs: int) -> None:
    """The measured process: enqueue ``jobs`` jobs with the I/O stubbed out."""
    from redis.connection import Connection

    import conveyor
    from conveyor.backends.redis import _blocking
    from conveyor.backends.redis import backend as backend_module

    reference = Connection()

    # Trees before enqueue.lua answered only replacements expect every stored id back.
    echo_ids = not hasattr(backend_module, "_stored_ids")

    def stub(self: object, keys: list[str], args: list[str], single: bool = False) -> list[str]:
        pack = getattr(self, "_pack", None)  # this tree's own packing, where it has one
        if pack is not None:
            pack("0" * 40, keys, args)
        else:
            reference.pack_command("EVALSHA", "0" * 40, len(keys), *keys, *args)
        if not echo_ids:
            return []  # no job's dedup key was held by another
        groups = json.loads(args[-1])
        return [job_id for group in groups for job_id in group[-1][::3]]

    _blocking.BlockingEnqueuer.run = stub  # type: ignore[method-assign]
    app = conveyor.App("redis://127.0.0.1:1/0", result_ttl=3600)

    @app.task(name="bench.noop")
    def noop(tag: str) -> None:
        return None

    if mode == "single":
        for _ in range(jobs):
            noop.enqueue("n")
    elif mode == "by_name":
        for _ in range(jobs):
            app.enqueue("bench.noop", args=["n"], tenant=None)
    elif mode == "many_s":
        for _ in range(jobs // 1000):
            app.enqueue_many([noop.s("n") for _ in range(1000)])
    else:
        for _ in range(jobs // 1000):
            app.enqueue_many([{"task": "bench.noop", "args": ["n"]} for _ in range(1000)])
    os._exit(0)  # no clean-up: nothing was opened, and exit hooks would count


def instructions(mode: str, jobs: int) -> int:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("needs valgrind on PATH")
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
    out = subprocess.run(
        [*cmd, __file__, "--child", mode, str(jobs)], capture_output=True, text=True, check=True
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modes", nargs="*", help=f"some of {', '.join(MODES)} (default: all)")
    parser.add_argument("-n", "--jobs", type=int, default=4000, help="N (a multiple of 1,000)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_jobs(args.child[0], int(args.child[1]))
        return
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; modes: {', '.join(MODES)}")
    import conveyor

    print(f"conveyor from {os.path.dirname(conveyor.__file__)}")
    for mode in args.modes or MODES:
        per_job = (instructions(mode, 2 * args.jobs) - instructions(mode, args.jobs)) / args.jobs
        print(f"{mode:<9} {round(per_job):>9,} client instructions per job", flush=True)


if __name__ == "__main__":
    main()
