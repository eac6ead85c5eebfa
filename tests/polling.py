"""One way to wait for something a test cannot be told about (a process's progress, a server coming up)."""

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.2,
               give_up: Callable[[], bool] | None = None) -> Any:
    """Call `condition` every `interval` seconds until it returns something truthy, and return that. Return None
    when `timeout` seconds have passed, or at once when `give_up()` is true (e.g. the process waited on has ended).
    What `condition` raises (an assertion on the process, say) goes to the caller."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline or (give_up is not None and give_up()):
            return None
        time.sleep(interval)
