"""Files beneath a task's folder, reached one component at a time from a directory descriptor
with ``O_NOFOLLOW``: a link, planted by this task or an earlier one, is never followed, so
nothing written or read here can land outside the folder. (The transfer process that uses this
also runs as the task's user, so even a race could reach only what that user may touch.)"""

from __future__ import annotations

import os
from collections.abc import Sequence

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(ValueError):
    """A relative path that is empty, absolute, holds NUL or a `..` component."""


def components(relative: str) -> list[str]:
    """The components of a path that must stay beneath its base: no absolute path, no NUL, no
    `..`; `.` and empty components (`a//b`) are dropped."""
    if "\x00" in relative:
        raise PathRefused("the path contains a NUL character")
    if relative.startswith("/"):
        raise PathRefused("the path must be relative")
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise PathRefused("the path must not contain '..'")
    return parts


def open_dir(path: str) -> int:
    return os.open(path, _DIR_FLAGS)


def walk_dirs(base_fd: int, parts: Sequence[str], *, create: bool, mode: int = 0o770) -> int:
    """A new descriptor of the directory ``parts`` beneath ``base_fd`` (created when asked)."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def create_file(dir_fd: int, name: str, mode: int) -> int:
    """A fresh file ``name`` in ``dir_fd`` for writing; an old entry (a link included) is
    replaced, never written through."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)


def open_file(base_fd: int, parts: Sequence[str]) -> int:
    """A descriptor for reading the regular file ``parts`` beneath ``base_fd``."""
    dir_fd = walk_dirs(base_fd, parts[:-1], create=False)
    try:
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
