"""Output-file patterns as Batch reads them (semantics §5.3): relative to the task's working
directory, or absolute beneath the task folder; ``*``, ``?``, ``[abc]``, ``[a-c]``, ``[!abc]``
within a name, ``**`` for any number of directories; names starting with ``.`` only when the
pattern's own component starts with ``.``; ``$VAR``/``${VAR}`` expanded from the task's
environment first.

Matching walks the task folder from a directory descriptor and never follows a link: a link is
neither a file to upload nor a directory to enter, so no pattern reaches outside the folder.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

_WILDCARD = re.compile(r"[*?\[]")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
WORKING_DIR = "wd"
MAX_MATCHES = 100_000
"""More matches than any one pattern may upload: past it the upload fails instead of walking on."""


class PatternRefused(ValueError):
    """A pattern that reaches outside the task folder."""


@dataclass(frozen=True)
class Pattern:
    base: tuple[str, ...]      # literal directories beneath the task folder
    rest: tuple[str, ...]      # the components to match beneath `base` ("" when none)
    has_wildcard: bool


def expand(pattern: str, env: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), pattern)


def parse(pattern: str, task_dir: str, env: Mapping[str, str]) -> Pattern:
    text = expand(pattern, env)
    if "\x00" in text or not text:
        raise PatternRefused("the file pattern is empty or holds a NUL character")
    if text.startswith("/"):
        root = task_dir.rstrip("/")
        relative = posixpath.normpath(text)
        if relative != root and not relative.startswith(root + "/"):
            raise PatternRefused(f"the file pattern {pattern!r} is outside the task directory")
        relative = relative[len(root):].lstrip("/")
    else:
        relative = posixpath.normpath(posixpath.join(WORKING_DIR, text))
    parts = tuple(part for part in relative.split("/") if part not in ("", "."))
    if not parts or parts[0] == "..":
        raise PatternRefused(f"the file pattern {pattern!r} is outside the task directory")
    # `**/**` is `**` (kept apart, each would multiply the walk by the depth of the tree).
    parts = tuple(part for i, part in enumerate(parts) if not (part == "**" and i and parts[i - 1] == "**"))
    if parts[-1] == "**":
        parts = (*parts, "*")  # a trailing `**` is every file beneath, as `**/*`
    first = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), None)
    if first is None:
        return Pattern(parts[:-1], parts[-1:], False)
    return Pattern(parts[:first], parts[first:], True)


def matches(task_fd: int, pattern: Pattern) -> Iterator[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(path beneath the task folder, path beneath the pattern's base) of every regular file
    the pattern matches, each once."""
    try:
        base_fd = _walk(task_fd, pattern.base)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return
    seen: set[tuple[str, ...]] = set()
    try:
        for found in _match(base_fd, pattern.rest, (), set()):
            if found not in seen:
                seen.add(found)
                if len(seen) > MAX_MATCHES:
                    raise PatternRefused(f"the file pattern matches more than {MAX_MATCHES} files")
                yield pattern.base + found, found
    finally:
        os.close(base_fd)


def _walk(fd: int, parts: tuple[str, ...]) -> int:
    current = os.dup(fd)
    for part in parts:
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
        finally:
            os.close(current)
        current = child
    return current


def _entries(dir_fd: int) -> list[tuple[str, int]]:
    out = []
    with os.scandir(dir_fd) as listing:
        for entry in listing:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            out.append((entry.name, mode))
    return out


def _visible(name: str, component: str) -> bool:
    return not name.startswith(".") or component.startswith(".")


def _match(dir_fd: int, rest: tuple[str, ...], prefix: tuple[str, ...],
           visited: set[tuple[int, int, int]]) -> Iterator[tuple[str, ...]]:
    """Each (directory, rest of the pattern) is matched once: without links a directory has one
    path, so a second visit (through another `**`) could only find the same files again, and
    several `**` would otherwise make the walk exponential in their number."""
    if not rest:
        return
    found = os.fstat(dir_fd)
    key = (found.st_dev, found.st_ino, len(rest))
    if key in visited:
        return
    visited.add(key)
    head, tail = rest[0], rest[1:]
    entries = _entries(dir_fd)
    if head == "**":
        yield from _match(dir_fd, tail, prefix, visited)
        for name, mode in entries:
            if stat.S_ISDIR(mode) and not name.startswith("."):
                yield from _descend(dir_fd, name, rest, prefix, visited)
        return
    for name, mode in entries:
        if not fnmatch.fnmatchcase(name, head) or not _visible(name, head):
            continue
        if not tail and stat.S_ISREG(mode):
            yield (*prefix, name)
        elif tail and stat.S_ISDIR(mode):
            yield from _descend(dir_fd, name, tail, prefix, visited)


def _descend(dir_fd: int, name: str, rest: tuple[str, ...], prefix: tuple[str, ...],
             visited: set[tuple[int, int, int]]) -> Iterator[tuple[str, ...]]:
    try:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return  # a link (never followed), gone, or unreadable by the task's user
    try:
        yield from _match(child, rest, (*prefix, name), visited)
    finally:
        os.close(child)


def blob_name(pattern: Pattern, beneath_base: tuple[str, ...], path: str | None) -> str:
    """Batch's naming: no wildcard → `path` is the blob's name (else the file's name); with
    wildcards → `path` is a virtual directory the file's path beneath the pattern's base joins."""
    relative = "/".join(beneath_base)
    if not pattern.has_wildcard:
        return path or relative
    return f"{path.rstrip('/')}/{relative}" if path else relative
