"""The demo's clean-up of Gradio's cache: uploads and outputs deleted by age, from a thread of its own.

Gradio's `delete_cache` does the same, but Gradio 6.31 walks the live sets of tracked files from a worker thread,
so a request that finishes during its sweep ("Set changed size during iteration") ends its clean-up task for good,
and the disk fills from then on. `app.py` keeps both: Gradio's (which also empties the cache at shut-down) and this
one, started by `app.main` as the demo launches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol


logger = logging.getLogger(__name__)


class Prunable(Protocol):
    """Files with their own limits (the demo's result files): `prune()` deletes what is past them."""

    def prune(self) -> None: ...


def sweep_interval(max_age_s: int) -> int:
    """Seconds between sweeps for files deleted `max_age_s` seconds after they were written: a quarter of the age,
    at least 1 s and at most an hour."""
    return max(1, min(3600, max_age_s // 4))


def sweep_cache(demo: Any, results: Prunable, max_age_s: float) -> None:
    """Delete the uploads and outputs Gradio tracks for `demo` (a `gr.Blocks`) that are older than `max_age_s`,
    except the files its blocks keep (examples), then prune `results`.

    Each set of tracked files is read through one atomic copy, so requests may add files meanwhile.
    """
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    now = time.time()
    for files in demo.temp_file_sets:
        gone = set()
        for file in list(files):
            if file in keep:
                continue
            try:
                if now - os.lstat(file).st_ctime > max_age_s:
                    os.remove(file)
                    gone.add(file)
            except FileNotFoundError:
                gone.add(file)
        files.difference_update(gone)
    results.prune()


def start_cache_sweeper(
    demo: Any, results: Prunable, max_age_s: float, every_s: float, stop: threading.Event | None = None
) -> threading.Thread:
    """Run `sweep_cache` every `every_s` seconds in a daemon thread until `stop` is set; a failed sweep is logged
    and retried."""
    stop = stop or threading.Event()

    def sweep_forever() -> None:
        while not stop.wait(every_s):
            try:
                sweep_cache(demo, results, max_age_s)
            except Exception:  # a clean-up that stops for good would let the disk fill
                logger.exception("Cache clean-up failed; retrying in %s s", every_s)

    thread = threading.Thread(target=sweep_forever, name="asuka-cache-sweeper", daemon=True)
    thread.start()
    return thread
