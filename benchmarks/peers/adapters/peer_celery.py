"""Celery with the Redis broker: `celery -A peer_celery worker -c 10` (the default prefork
pool, so 10 child processes); two processes are two `celery worker` nodes."""

from __future__ import annotations

from collections.abc import Sequence

from base import RedisPeer, venv_bin
from celery import Celery
from common import record, redis_url

app = Celery("peer_celery", broker=redis_url())
app.conf.broker_connection_retry_on_startup = True


@app.task(name="peer_celery.noop")  # type: ignore[untyped-decorator]
def noop(tag: str) -> None:
    record(tag)


class CeleryPeer(RedisPeer):
    name = "celery"

    def reset(self) -> None:
        super().reset()
        # Kombu keeps the queue's binding in `_kombu.binding.celery` and caches that it
        # declared it, so after a flush the producer would route messages to nowhere:
        # declare the queue again.
        with app.connection_for_write() as connection:
            queue = app.amqp.queues[app.conf.task_default_queue]
            queue.bind(connection.default_channel).declare()

    def enqueue_each(self, tags: Sequence[str], tenant: str | None = None) -> None:
        for tag in tags:
            noop.delay(tag)

    def worker_commands(self, processes: int, concurrency: int) -> list[list[str]]:
        base = [venv_bin("celery"), "-A", "peer_celery", "worker", "-c", str(concurrency)]
        return [[*base, "-n", f"peerbench{i}@%h", "-l", "WARNING"] for i in range(processes)]

    def close(self) -> None:
        app.close()
        super().close()
