"""The app that chaos worker processes load: ``conveyor worker tests.chaos.worker_app:app``.

The store URL comes from ``CONVEYOR_URL`` and the history file from
``CONVEYOR_CHAOS_HISTORY``; importing this module also makes this process's workers
record their leases and outcomes (``chaos_tasks.install``).
"""

from __future__ import annotations

import os

from tests.chaos.chaos_tasks import HISTORY_ENV, install, make_app
from tests.chaos.history import Recorder

_history = os.environ[HISTORY_ENV]
install(Recorder(_history))
app = make_app(os.environ["CONVEYOR_URL"], _history)
