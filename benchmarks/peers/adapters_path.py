"""Put the adapters folder on sys.path: the harness and the workers import the peer
modules by their top-level names (`peer_rq`, ...), the way the peers' CLIs expect."""

from __future__ import annotations

import sys
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parent / "adapters"
if str(ADAPTERS) not in sys.path:
    sys.path.insert(0, str(ADAPTERS))
