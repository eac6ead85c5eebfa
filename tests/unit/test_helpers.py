"""The small helpers every package shares: one-line errors and files that are complete or absent."""

import pytest

from ptplus_tune.atomic import replacing_file, replacing_folder, write_text
from ptplus_tune.errors import first_line


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\nTraceback (most recent call last):\n  ...")) == "bad value"
    assert first_line(RuntimeError("  \n  padded first line  \nsecond")) == "padded first line"
    assert first_line(KeyError()) == "KeyError"  # no text: its type
    assert first_line(OSError("x" * 500)) == "x" * 200
    assert first_line(OSError("x" * 500), limit=10) == "x" * 10
    assert first_line("text\nmore") == "text" and first_line("") == ""


def test_a_replaced_folder_is_complete_or_untouched(tmp_path):
    target = tmp_path / "out" / "adapter"
    with replacing_folder(target) as staging:
        assert staging.parent == target.parent and not target.exists()
        (staging / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), replacing_folder(target) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("the disk filled up")
    assert (target / "weights").read_text() == "v1"  # the old folder stands
    with replacing_folder(target) as staging:
        (staging / "other").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["other"]  # replaced whole, nothing of v1 left
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]  # no staging folder left behind


def test_a_replaced_file_is_complete_or_untouched(tmp_path):
    target = tmp_path / "state.yaml"
    write_text(target, "a: 1\n")
    with pytest.raises(OSError), replacing_file(target) as tmp:
        tmp.write_text("a: 2 (half")
        raise OSError("no space left on device")
    assert target.read_text() == "a: 1\n"
    write_text(target, "a: 3\n")
    assert target.read_text() == "a: 3\n"
    assert [p.name for p in tmp_path.iterdir()] == ["state.yaml"]
