"""Reading a workload's output files on its owner's behalf.

The files live in the user's directories, which the user controls: a process with the
service's privileges that opened them could be led through a symlink to any file on the
machine. So they are read by a process running as the workload's own POSIX account.
"""

from __future__ import annotations

import asyncio
import os

__all__ = ["read_as"]


async def read_as(uid: int, gid: int, path: str, offset: int, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``path`` from ``offset``, read as ``uid``; None when the file
    does not exist or that account may not read it."""
    command = ["tail", "-c", f"+{offset + 1}", "--", path]
    if os.geteuid() != uid:
        command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *command]
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        cwd="/",
    )
    assert proc.stdout is not None
    data = await proc.stdout.read(limit)
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    code = await proc.wait()
    if code not in (0, -9) and not data:
        return None
    return data
