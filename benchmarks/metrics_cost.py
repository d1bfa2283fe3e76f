"""What exact /metrics costs: the worker's counting hooks per job, the size of a
worker's record, and summing records at a scrape (no store: CPU time only).

    python benchmarks/metrics_cost.py [--jobs 200000] [--tenants 10000] [--records 10]
"""

from __future__ import annotations

import argparse
import os
import time

from conveyor import metrics
from conveyor.backends.base import ClaimedJob, Outcome, OutcomeKind
from conveyor.metrics import WorkerCounts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=10)
    args = parser.parse_args()
    n = args.jobs
    jobs = [
        ClaimedJob(
            f"id{i}",
            "bench.noop",
            "default",
            f"t{i % args.tenants}",
            5,
            "[]",
            "{}",
            1,
            3,
            None,
            f"tok{i}",
            1030.0,
            999.0,
        )
        for i in range(n)
    ]
    outcomes = [Outcome(j.id, j.lease_token, OutcomeKind.SUCCEEDED) for j in jobs]
    accepted = [True] * 8

    def run(counts: WorkerCounts | None) -> float:
        """Attempts as a worker with 8 slots sees them: start, end, settle 8 at a time."""
        t0 = time.process_time()
        for k in range(0, n, 8):
            batch, done = jobs[k : k + 8], outcomes[k : k + 8]
            if counts is not None:
                for job in batch:
                    counts.started(job, 30.0)
                for job, outcome in zip(batch, done, strict=True):
                    counts.ended(job, outcome)
                counts.settled(done, accepted)
        return time.process_time() - t0

    counts = WorkerCounts("bench")
    base = min(run(None) for _ in range(3))
    cost = min(run(counts) for _ in range(3)) - base
    t0 = time.process_time()
    record = counts.to_json(0.0)
    write = time.process_time() - t0
    records = [(f"w{i}", record) for i in range(args.records)]
    t0 = time.process_time()
    metrics.total(records)
    scrape = time.process_time() - t0
    print(f"load average        {os.getloadavg()[0]:.1f}")
    print(f"hooks per job       {cost / n * 1e6:.2f} us CPU (start + end + settle)")
    print(
        f"record              {len(record) / 1024:.0f} KiB ({args.tenants} tenants), "
        f"{write * 1e3:.1f} ms to encode"
    )
    print(f"sum of {args.records} records  {scrape * 1e3:.0f} ms CPU per scrape")


if __name__ == "__main__":
    main()
