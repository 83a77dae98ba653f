"""A small real filesystem the test creates and can fill: ext4 on a loop device.

Operators meet a full disk as ENOSPC from a real filesystem, so the faults tests make one:
an image file, ``mkfs.ext4 -m 0`` (no blocks reserved for root, who runs the service in the
tests), mounted on a loop device. ``fill`` writes a ballast file until the filesystem refuses
another block; ``free`` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["BALLAST", "fill", "free", "small_filesystem"]

BALLAST = ".ballast"


@contextlib.contextmanager
def small_filesystem(
    megabytes: int = 32, *, mode: int = 0o755, reserved: int = 0
) -> Iterator[Path]:
    """A fresh ext4 filesystem of ``megabytes`` mounted at a new directory, ``reserved`` per
    cent of it kept for root (``mkfs -m``); skips the test where loop mounts are not possible
    (not root, no loop devices)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a loop-mounted filesystem needs root and mkfs.ext4 (e2fsprogs)")
    work = Path(tempfile.mkdtemp(prefix="allotment-loopfs."))
    image, mountpoint = work / "fs.img", work / "mnt"
    mountpoint.mkdir()
    with image.open("wb") as f:
        f.truncate(megabytes * 2**20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", str(reserved), "-E", "lazy_itable_init=0", str(image)],
        check=True,
        capture_output=True,
    )
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot loop-mount a filesystem here: {mounted.stderr.strip()}")
    try:
        os.chmod(mountpoint, mode)
        yield mountpoint
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode == 0:
                break
            subprocess.run(["sync"], check=False)
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def fill(mountpoint: Path) -> int:
    """Write a ballast file until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 2**16
    fd = os.open(mountpoint / BALLAST, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    return written


def free(mountpoint: Path) -> None:
    """Remove the ballast: the filesystem has room again."""
    with contextlib.suppress(FileNotFoundError):
        (mountpoint / BALLAST).unlink()
    os.sync()
