"""The pool's certificates on a node (semantics §5.6): what the hello sends, written into each task's
`certs` folder (`AZ_BATCH_CERTIFICATES_DIR`) when the certificate's visibility names that kind of task.

Names follow Batch on Linux, `<thumbprint algorithm>-<lower-case thumbprint>.<format>`: a cer
certificate is `sha1-<tp>.cer` (DER), a pfx is `sha1-<tp>.pfx` with its password beside it in
`sha1-<tp>.pfx.pw` (the names Batch Shipyard's node scripts read). The folder and every file
belong to the task's own user and no one else may open them (0700 / 0600): a certificate reaches
exactly the tasks its visibility allows, as their users, and a task cannot read another task's
certificates, nor the start task's. Certificates for remote users go into each login user's
`~/certs` (`ssh.NodeLogins`), as on Azure. Everything is written beneath the task folder through file
descriptors that never follow a link, since the task's user owns that folder and may have left one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("shoal.agent")

CERTS_DIR_MODE = 0o700
CERT_FILE_MODE = 0o600
START_TASK, TASK, REMOTE_USER = "starttask", "task", "remoteuser"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class NodeCertificate:
    """One certificate the node installs. `repr` leaves the secrets out, so no log can hold them."""

    algorithm: str
    thumbprint: str
    certificate_format: str
    public_der: bytes
    visibility: frozenset[str]
    pfx: bytes | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"NodeCertificate({self.algorithm}-{self.thumbprint}, {self.certificate_format})"

    @property
    def stem(self) -> str:
        return f"{self.algorithm}-{self.thumbprint}"

    def files(self) -> list[tuple[str, bytes]]:
        if self.certificate_format == "pfx" and self.pfx is not None:
            return [(f"{self.stem}.pfx", self.pfx), (f"{self.stem}.pfx.pw", (self.password or "").encode())]
        return [(f"{self.stem}.cer", self.public_der)]


def from_hello(items: Any) -> list[NodeCertificate]:
    """The hello's `certificates`; an entry that is not well formed is skipped (and said so)."""
    out: list[NodeCertificate] = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(_parse(item))
        except (TypeError, ValueError, binascii.Error):
            log.warning("skipping a certificate the control plane sent that is not well formed")
    return out


def _parse(item: Any) -> NodeCertificate:
    if not isinstance(item, dict):
        raise TypeError("not an object")
    algorithm, thumbprint = str(item.get("thumbprintAlgorithm")), str(item.get("thumbprint"))
    # They become file names: nothing but the lower-case hex Batch allows.
    if algorithm != "sha1" or not thumbprint or len(thumbprint) > 40 or not set(thumbprint) <= _HEX:
        raise ValueError("bad thumbprint")
    certificate_format = "pfx" if item.get("format") == "pfx" else "cer"
    pfx = item.get("pfxData")
    password = item.get("password")
    visibility = item.get("visibility")
    return NodeCertificate(
        algorithm=algorithm, thumbprint=thumbprint, certificate_format=certificate_format,
        public_der=base64.b64decode(str(item.get("publicData")), validate=True),
        visibility=frozenset(v for v in visibility if isinstance(v, str)) if isinstance(visibility, list)
        else frozenset((START_TASK, TASK, REMOTE_USER)),
        pfx=base64.b64decode(pfx, validate=True) if isinstance(pfx, str) else None,
        password=password if isinstance(password, str) else None)


def install(task_dir: Path, certificates: list[NodeCertificate], kind: str, owner: tuple[int, int] | None) -> None:
    """Write the certificates `kind` may see into `task_dir/certs` (for remote users, their home
    folder's), owned by `owner` (uid, gid; None: the agent's own user). Worker thread; raises
    OSError when the folder cannot be made."""
    visible = [c for c in certificates if kind in c.visibility]
    if not visible:
        return
    uid, gid = owner if owner is not None else (os.geteuid(), os.getegid())
    task_fd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        certs_fd = _own_dir(task_fd, "certs", uid, gid)
    finally:
        os.close(task_fd)
    try:
        for certificate in visible:
            for name, content in certificate.files():
                _write(certs_fd, name, content, uid, gid)
    finally:
        os.close(certs_fd)


def _own_dir(parent_fd: int, name: str, uid: int, gid: int) -> int:
    """`name` beneath `parent_fd` as a private directory of `uid`; whatever else was there (a
    link, a file) is removed rather than followed."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=parent_fd)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, CERTS_DIR_MODE, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.fchmod(fd, CERTS_DIR_MODE)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, uid, gid)
    except OSError:
        os.close(fd)
        raise
    return fd


def _write(dir_fd: int, name: str, content: bytes, uid: int, gid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, CERT_FILE_MODE,
                 dir_fd=dir_fd)
    try:
        os.fchmod(fd, CERT_FILE_MODE)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, uid, gid)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
