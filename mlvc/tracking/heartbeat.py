"""The heartbeat of a live run: ``heartbeats/<experiment id>``, rewritten every few seconds.

A daemon thread rewrites the object every ``interval`` seconds; it dies with the process, so
a killed run's heartbeat goes stale and the run reads as crashed (format:
docs/experiments.md). The first beat is written before the experiment's ref, so a listed run
always has one; the clean end deletes it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from mlvc.experiments.summary import heartbeat_key
from mlvc_core.storage import Store

log = logging.getLogger("mlvc")

__all__ = ["Heartbeat"]


class Heartbeat:
    """Writes one experiment's heartbeat, now and then every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def write(store: Store, exp_id: str) -> None:
        """Write the heartbeat once.

        Raises:
            StorageError: The store refused it.
        """
        doc = {
            "experiment": exp_id,
            "time": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        store.write(heartbeat_key(exp_id), json.dumps(doc).encode())

    def start(self, store: Store, exp_id: str) -> None:
        """Start the thread that rewrites the heartbeat (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, args=(store, exp_id), name="mlvc-heartbeat", daemon=True
        )
        self._thread.start()

    def _beat(self, store: Store, exp_id: str) -> None:
        failing = False
        while not self._stop.wait(self._interval):
            try:
                self.write(store, exp_id)
                failing = False
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not kill the thread
                if not failing:
                    log.warning("mlvc: heartbeat for %s failed: %s", exp_id[:12], exc)
                failing = True

    def stop(self, wait: bool = True) -> None:
        """Stop beating; ``wait``: until the thread ended (not when it may hang in storage)."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
