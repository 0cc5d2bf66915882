"""Work on a background thread, consumed in order: how the engines and the Spark workers overlap host
work (Arrow batches, tokenizing, packing) with the device.

The Rust tokenizer and torch's copies release the GIL, so a daemon thread producing items really runs
alongside the thread that feeds the device.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

_DONE = object()


def in_background(make_items: Callable[[], Iterable], depth: int) -> Iterator:
    """Iterate `make_items()` produced on a daemon thread, at most `depth` items ahead.

    An exception raised there is re-raised here; if the consumer stops early (or fails), the thread
    stops too instead of waiting forever on a full queue.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_items():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
            put(err)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
