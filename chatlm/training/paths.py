"""Where a round's adapter is written: the names the worker writes and the reaper reads.

Kept apart from ``worker`` (an entry point, which builds what it needs in ``chatlm.compose``) so that
``rounds`` can clean up after a dead worker without importing it. Imports nothing of ours at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatlm.config import Settings

TMP_PREFIX = ".tmp-run"
"""A round's adapter while it is written: ``<TMP_PREFIX><run id>-<host>-pid<pid>``."""
ADAPTER_PREFIX = "chatlm"
"""A registered round's adapter: ``<ADAPTER_PREFIX>-v<n>`` (reader rounds use their own prefix)."""


def adapters_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "adapters"


def temp_dir(settings: Settings, run_id: int, pid: int, host: str) -> Path:
    """Named with the host and pid, so that only a worker's own host reaps it (shared storage)."""
    return adapters_dir(settings) / f"{TMP_PREFIX}{run_id}-{host}-pid{pid}"
