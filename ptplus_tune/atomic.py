"""Files and folders that are complete or absent: written under a temporary name beside the target, then renamed
over it in one step, so a crash (or a full disk) never leaves a half-written artifact where a reader looks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `target` to fill. When the block ends normally it replaces `target` (and whatever
    was there); when it raises, it is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def replacing_file(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `target` to write; renamed over `target` when the block ends normally, removed when
    it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike, text: str) -> None:
    """Replace `target`'s content with `text` (UTF-8) in one step."""
    with replacing_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
