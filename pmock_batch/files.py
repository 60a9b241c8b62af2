"""Paths inside the output directory: what the tool may read, write, hash or delete.

Writing. Everything the tool writes under OUT (images, ``.rejected/``, the
manifest's compaction, ``report.html``, ``.thumbs/``) goes through
:class:`AtomicFile` (or :func:`write_atomic`, its shorthand for bytes in
hand): a temporary file created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` in the
target's folder, fsynced, then renamed into place; there is no other
temp-fsync-rename. Each folder below OUT is opened (or created) one component
at a time with ``O_NOFOLLOW`` and the rename is made relative to those open
folders (``dir_fd``), so a symbolic link anywhere below OUT is never
followed, even if it appears mid-run. The target itself is checked with
``lstat`` just before the rename: a link, a folder or a device there is never
replaced. A refusal is an :class:`~pmock_batch.errors.OutputPathError` that
names the link. OUT itself may be a link, as may its parents: only what is
below OUT is the tool's.

Reading. Everything the tool reads back from OUT because a manifest record
names it (resume, ``--verify``, ``--prune``, thumbnails) goes through
:func:`contained_file`: a record is text anyone may have edited, so a path
that leaves OUT (``../secret.txt``, ``/etc/passwd``), goes through a symbolic
link, or names something other than a regular file (``/dev/zero``, a FIFO) is
treated as missing. Reads are bounded by the size the record promises.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import posixpath
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import OutputPathError

__all__ = [
    "TMP_SUFFIX",
    "AtomicFile",
    "check_own_file",
    "contained_file",
    "open_folder",
    "open_regular",
    "remove_empty_folders",
    "remove_file",
    "remove_stray_temps",
    "sha256_of",
    "split_relative",
    "write_atomic",
]

TMP_SUFFIX = ".pmock-tmp"
_HASH_CHUNK = 1 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _CLOEXEC
_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
# O_NONBLOCK: a FIFO swapped in where a file was opens at once (and is refused), not
# blocking the run until some writer comes; on a regular file it changes nothing.
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def _outside(out_dir: Path, relative: str) -> OutputPathError:
    return OutputPathError(f"refusing to write {relative!r}: it is outside {out_dir}")


def split_relative(out_dir: Path, relative: str) -> tuple[str, ...]:
    """The components of ``relative``, a path below ``out_dir``, normalised without the disk.

    ``a/../b.png`` is ``("b.png",)``: ``..`` is resolved on the text, never
    by the operating system, so it cannot climb out through a link. Raises
    :class:`OutputPathError` for an absolute path or one that leaves ``out_dir``.
    """
    if not relative or "\0" in relative or relative.startswith(("/", "\\")):
        raise _outside(out_dir, relative)
    norm = posixpath.normpath(relative)
    if norm in (".", "..") or norm.startswith(("../", "/")):
        raise _outside(out_dir, relative)
    return tuple(norm.split("/"))


def _refusal(out_dir: Path, relative: str, parts: Sequence[str], dir_fd: int) -> OutputPathError:
    """Why ``out_dir/parts`` cannot be used: it is a link, or not what it should be."""
    where = out_dir.joinpath(*parts)
    try:
        mode = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = 0
    if stat.S_ISLNK(mode):
        what = "a symbolic link"
    elif stat.S_ISDIR(mode):
        what = "a folder"
    elif stat.S_ISREG(mode):
        what = "a file, not a folder"
    else:
        what = "not a regular file or folder"
    return OutputPathError(f"refusing to write {relative!r}: {where} is {what}")


def open_folder(
    out_dir: Path, folders: Sequence[str], *, relative: str | None = None, create: bool = True
) -> int:
    """A file descriptor of the folder ``out_dir/folders``, reached through no link.

    Each component is created if missing (unless ``create`` is False) and
    opened with ``O_NOFOLLOW``, relative to the one before: a link at any of
    them raises :class:`OutputPathError` naming it (``relative`` is the path
    being written, for the message). ``out_dir`` itself may be a link. The
    caller closes the descriptor.
    """
    relative = relative if relative is not None else "/".join(folders)
    if create:
        os.makedirs(out_dir, exist_ok=True)
    fd = os.open(out_dir, _DIR_FLAGS)  # OUT itself may be a link: followed on purpose
    try:
        for depth, part in enumerate(folders, 1):
            if create:
                with contextlib.suppress(FileExistsError):  # mkdir never follows a link
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _refusal(out_dir, relative, folders[:depth], fd) from exc
                raise
            fd, parent = child, fd
            os.close(parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_target(out_dir: Path, relative: str, parts: Sequence[str], dir_fd: int) -> None:
    """Refuse to replace anything at ``parts[-1]`` but a regular file (``lstat``, no following)."""
    try:
        mode = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise _refusal(out_dir, relative, parts, dir_fd)


def check_own_file(out_dir: Path, name: str) -> None:
    """Refuse to use ``out_dir/name`` (the manifest, say) if it is a link or not a regular file.

    A missing file is fine. Raises :class:`OutputPathError`.
    """
    parts = split_relative(out_dir, name)
    try:
        fd = open_folder(out_dir, parts[:-1], relative=name, create=False)
    except FileNotFoundError:
        return
    try:
        _check_target(out_dir, name, parts, fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file under OUT written to a temporary name, then renamed into place.

    The temporary file ``.NAME.XXXXXXXX.pmock-tmp`` is created, exclusively and
    without following a link, in the folder of ``relative``, which is reached
    through no link (see :func:`open_folder`). :meth:`commit` fsyncs it and
    renames it to ``relative`` (or another path under OUT, such as
    ``.rejected/...``), after checking with ``lstat`` that nothing but a
    regular file is there. :meth:`discard` removes it. Blocking: use it from
    a worker thread in async code.
    """

    def __init__(self, out_dir: Path, relative: str) -> None:
        self.out_dir = out_dir
        self.relative = relative
        *folders, name = split_relative(out_dir, relative)
        self._folders = tuple(folders)
        self._dir: int | None = open_folder(out_dir, self._folders, relative=relative)
        self.name: str | None = f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(self.name, _TMP_FLAGS, 0o666, dir_fd=self._dir)  # umask applies
        except BaseException:
            os.close(self._dir)
            raise
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.file.write(data)

    def read_start(self, count: int) -> bytes:
        """The first ``count`` bytes written so far."""
        self.file.flush()
        return os.pread(self.file.fileno(), count, 0)

    def commit(self, relative: str | None = None) -> Path:
        """Fsync, close and rename to ``out_dir/relative`` (default: the path it was made for).

        Raises :class:`OutputPathError` if a link or anything but a regular
        file is at the target or on the way to it; the temporary file is then
        left for :meth:`discard`.
        """
        if self._dir is None or self.name is None:
            raise RuntimeError("AtomicFile is already committed or discarded")
        relative = self.relative if relative is None else relative
        parts = split_relative(self.out_dir, relative)
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        same = parts[:-1] == self._folders
        dst = self._dir if same else open_folder(self.out_dir, parts[:-1], relative=relative)
        try:
            _check_target(self.out_dir, relative, parts, dst)
            os.replace(self.name, parts[-1], src_dir_fd=self._dir, dst_dir_fd=dst)
        finally:
            if not same:
                os.close(dst)
        self.name = None
        self._close_dir()
        return self.out_dir.joinpath(*parts)

    def discard(self) -> None:
        """Close and remove the temporary file, if still there. Safe to call more than once."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self.name is not None and self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self._dir)
        self.name = None
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.close(self._dir)
            self._dir = None

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()  # after a commit, this only closes what is left


def write_atomic(
    out_dir: Path, relative: str, data: bytes | bytearray | Iterable[bytes | bytearray]
) -> Path:
    """Write ``data`` (bytes, or chunks of them) to ``out_dir/relative`` through an
    :class:`AtomicFile`; return the path. Blocking.

    A crash at any point leaves the old file or the new one under the final
    name, never a truncated one; a failure leaves no temporary file.
    """
    chunks = (data,) if isinstance(data, bytes | bytearray) else data
    with AtomicFile(out_dir, relative) as tmp:
        for chunk in chunks:
            tmp.write(chunk)
        return tmp.commit()


def remove_file(out_dir: Path, relative: str) -> bool:
    """Delete the regular file ``out_dir/relative``, reached through no link; True if it was there.

    A link, a folder or a device at ``relative`` or on the way is left alone
    (:class:`OutputPathError`), as is a missing file (False).
    """
    parts = split_relative(out_dir, relative)
    try:
        fd = open_folder(out_dir, parts[:-1], relative=relative, create=False)
    except FileNotFoundError:
        return False
    try:
        try:
            _check_target(out_dir, relative, parts, fd)
            os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            return False
    finally:
        os.close(fd)
    return True


def remove_empty_folders(out_dir: Path, relative: str) -> None:
    """Remove the folders of ``relative`` below OUT that are now empty, deepest first,
    each reached through no link; stop at the first that is not (never OUT itself)."""
    parts = split_relative(out_dir, relative)[:-1]
    while parts:
        try:
            fd = open_folder(out_dir, parts[:-1], relative=relative, create=False)
        except (OSError, OutputPathError):
            return
        try:
            os.rmdir(parts[-1], dir_fd=fd)  # a link there is not a folder: left alone
        except OSError:  # not empty, gone, or not ours to remove
            return
        finally:
            os.close(fd)
        parts = parts[:-1]


def remove_stray_temps(out_dir: Path) -> int:
    """Delete temporary files a crashed run left in ``out_dir``; return how many.

    Links to folders are not followed (``os.fwalk``, removing by folder
    descriptor): only names below OUT itself are removed. Call it only while
    holding the run lock, so no live run owns them.
    """
    if not out_dir.is_dir():
        return 0
    removed = 0
    for folder, _, names, dir_fd in os.fwalk(out_dir):  # follow_symlinks=False
        top = folder == str(out_dir)
        for name in names:
            stray = name.startswith(".") and name.endswith(TMP_SUFFIX)
            compact = top and name.startswith(".") and name.endswith(".compact.tmp")
            if stray or compact:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)  # a link is removed itself, never its target
                    removed += 1
    return removed


def contained_file(out_dir: Path, relative: str) -> Path | None:
    """``out_dir/relative`` when it is a regular file inside ``out_dir`` reached through no link.

    ``out_dir`` itself may be a link (as it may be for a run). Returns None for
    anything else: an absolute path, ``..``, a link anywhere below ``out_dir``,
    a missing file, a folder or a device.
    """
    if not relative or relative.startswith(("/", "\\")) or "\\" in relative or ":" in relative:
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    path = out_dir
    try:
        for index, part in enumerate(parts):
            path = path / part
            mode = os.lstat(path).st_mode
            last = index == len(parts) - 1
            if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
                return None  # a link (lstat does not follow it), a device, a FIFO...
    except OSError:
        return None
    return path


def open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file, not reached through a link at
    its last step; else :class:`OSError`. Never blocks (a FIFO is refused, not waited on)."""
    fd = os.open(path, _READ_FLAGS)
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return handle


def sha256_of(path: Path, size: int) -> str | None:
    """The SHA-256 of a regular file that has exactly ``size`` bytes, else None.

    Opened without following a link and checked to be a regular file after
    opening, and never read past ``size`` bytes (plus one, to see it is longer).
    """
    try:
        fh = open_regular(path)
    except OSError:
        return None
    with fh:
        digest = hashlib.sha256()
        left = size + 1
        while left > 0 and (chunk := fh.read(min(_HASH_CHUNK, left))):
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest() if left == 1 else None
