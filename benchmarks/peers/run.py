"""Benchmark Conveyor against other Python job queues (see README.md beside this file).

    python benchmarks/peers/run.py --quick                 # smoke run, every system
    python benchmarks/peers/run.py --repeats 3 --json peers.json --plot docs/img/peers.png

The peers are installed from PyPI (versions pinned in requirements.txt) into a virtualenv
of their own, benchmarks/peers/.venv, together with this checkout of Conveyor (editable,
with its redis and postgres extras); the project's own venv is never touched. This
script creates that venv on first use and then re-runs itself inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _wanted_stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update((REPO / "pyproject.toml").read_bytes())  # Conveyor's extras may change
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create the harness venv and install the pinned peers (again when the pins change)."""
    if not _venv_python().exists():
        print(f"creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp = VENV / ".peerbench-installed"
    wanted = _wanted_stamp()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    print("installing the peers into the harness venv", flush=True)
    pip = [str(_venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", f"{REPO}[redis,postgres]"], check=True)
    stamp.write_text(wanted)


def main() -> None:
    if Path(sys.prefix).resolve() != VENV.resolve():
        ensure_venv()
        python = str(_venv_python())
        os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.path.insert(0, str(HERE))
    from harness import main as harness_main

    sys.exit(harness_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
