"""The worker: a supervisor of processes, each an asyncio loop of small pieces."""

from conveyor.worker.loop import Worker

__all__ = ["Worker"]
