"""The one atomic write (:func:`pmock_batch.files.write_atomic`): temp name, fsync, rename.

Links below OUT, stray temporary files and contained reads are tested in
``test_links.py``, through the CLI as well as directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pmock_batch.errors import OutputPathError
from pmock_batch.files import TMP_SUFFIX, write_atomic


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_write_atomic_writes_exact_bytes_in_nested_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    path = write_atomic(out, "icons/small/home.png", data)
    assert path == out.resolve() / "icons" / "small" / "home.png"
    assert path.read_bytes() == data
    assert files_under(out) == ["icons/small/home.png"]
    assert not [name for name in files_under(tmp_path) if name.endswith(TMP_SUFFIX)]


def test_write_atomic_replaces_an_existing_file_by_renaming(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_atomic(out, "a.png", b"old bytes")
    old_inode = path.stat().st_ino
    with path.open("rb") as reader:  # a reader of the old file keeps the whole old file
        new = write_atomic(out, "a.png", b"new, longer bytes")
        assert reader.read() == b"old bytes"
    assert new == path
    assert path.read_bytes() == b"new, longer bytes"
    assert path.stat().st_ino != old_inode  # a new file renamed into place, not rewritten
    assert files_under(out) == ["a.png"]


def test_write_atomic_many_files_leave_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for i in range(10):
        write_atomic(out, f"d{i % 3}/img{i}.webp", bytes([i]) * (i + 1))
    assert files_under(out) == sorted(f"d{i % 3}/img{i}.webp" for i in range(10))
    assert all(
        (out / f"d{i % 3}/img{i}.webp").read_bytes() == bytes([i]) * (i + 1) for i in range(10)
    )


@pytest.mark.parametrize("relative", ["../evil.png", "a/../../evil.png"])
def test_write_atomic_refuses_escapes(tmp_path: Path, relative: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError):
        write_atomic(out, relative, b"x")
    assert files_under(tmp_path) == []  # nothing written anywhere, in or out of OUT


def test_write_atomic_refuses_an_absolute_path(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError):
        write_atomic(out, str(tmp_path / "evil.png"), b"x")
    assert not (tmp_path / "evil.png").exists()


def test_write_atomic_refuses_a_symlink_escape(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutputPathError):
        write_atomic(out, "link/evil.png", b"x")
    assert list(outside.iterdir()) == []


def test_a_folder_at_the_target_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "taken.png").mkdir(parents=True)  # a directory where the file should go
    with pytest.raises(OutputPathError) as caught:
        write_atomic(out, "taken.png", b"data")
    assert str(caught.value) == f"refusing to write 'taken.png': {out}/taken.png is a folder"
    assert files_under(out) == []
    assert sorted(os.listdir(out)) == ["taken.png"]


def test_a_failed_rename_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write_atomic(out, "a.png", b"old")

    def broken_replace(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pmock_batch.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(out, "a.png", b"new")
    assert sorted(os.listdir(out)) == ["a.png"]
    assert (out / "a.png").read_bytes() == b"old"


def test_chunks_are_written_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_atomic(out, "report.html", (part.encode() for part in ["<p>", "é", "</p>"]))
    assert path.read_bytes() == "<p>é</p>".encode()
    assert files_under(out) == ["report.html"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "out"

    def chunks() -> object:
        yield b"half"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(out, "a.png", chunks())  # type: ignore[arg-type]
    assert os.listdir(out) == []


def test_remove_empty_folders_stops_at_a_link_and_at_out(tmp_path: Path) -> None:
    from pmock_batch.files import remove_empty_folders

    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    remove_empty_folders(out, "a/b/c.png")
    assert not (out / "a").exists() and out.is_dir()  # both emptied folders, never OUT
    outside = tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (out / "l").symlink_to(outside, target_is_directory=True)
    remove_empty_folders(out, "l/d/e.png")
    assert (outside / "d").is_dir() and (out / "l").is_symlink()  # not through the link
