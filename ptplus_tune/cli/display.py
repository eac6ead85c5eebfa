"""What the user sees while a study runs, fed by the service's progress records (ptplus_tune.service.progress).

On a terminal: a live view (rich) that keeps a study line and one line per running trial (step / max_steps, last
training loss and evaluation, elapsed, ETA) refreshed in place, with the events printed above it. Otherwise, or
with --quiet: one plain line per event.
"""

from __future__ import annotations

import logging
import math
import sys
import time

PROGRESS_LOGGER = "ptplus_tune.progress"


class PlainEvents(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {record.getMessage()}", file=sys.stderr, flush=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _number(value, digits: int = 4) -> str:
    """A figure, or `-` where there is none yet (a trial's training loss is NaN until its first logging window)."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def render(study: str, state: dict):
    """The study line and a table of the running trials (a rich renderable)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    best = state.get("best")
    best = f"best {state['metric']} {best[0]:.4f} ({best[1]})" if best else "no result yet"
    head = Text(f"study {study}: {state['finished']} done, {state['running']} running, {state['stopped']} "
                f"stopped early, {state['failed']} failed; {best}", style="bold")
    if not state["trials"]:
        return head
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for column in ("trial", "step", "train_loss", state["metric"], "elapsed", "ETA", "configuration"):
        table.add_column(column, no_wrap=column != "configuration", overflow="ellipsis")
    for row in state["trials"]:
        table.add_row(row["trial_id"], f"{row.get('step', 0)}/{row['max_steps']}", _number(row.get("train_loss")),
                      _number(row.get("eval")), _duration(row.get("elapsed")), _duration(row.get("eta")),
                      row.get("config", ""))
    return Group(head, table)


class LiveView(logging.Handler):
    """A rich Live display on stderr; events are printed above it, refreshes redraw it."""

    def __init__(self, study: str) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(level=logging.DEBUG)
        self.study = study
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.INFO:
                self.console.print(f"[{time.strftime('%H:%M:%S')}] {record.getMessage()}", markup=False,
                                   highlight=False)
            state = getattr(record, "state", None)
            if state is not None:
                self.live.update(render(self.study, state), refresh=True)
        except Exception:  # a display problem must never stop a study
            self.handleError(record)

    def close(self) -> None:
        self.live.stop()
        super().close()


def attach(study: str, quiet: bool) -> logging.Handler:
    """Route the service's progress records to the terminal; returns the handler (close it when the study ends)."""
    live = not quiet and sys.stderr.isatty() and sys.stdout.isatty()
    handler = LiveView(study) if live else PlainEvents()
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if live else logging.INFO)
    logger.propagate = False
    return handler


def detach(handler: logging.Handler) -> None:
    logging.getLogger(PROGRESS_LOGGER).removeHandler(handler)
    handler.close()
