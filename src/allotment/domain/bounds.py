"""What one submission may ask for, checked before anything is stored: what the kernel would
refuse to start, what could never run, and what would only fill the database.

The numbers are the kernel's where it has one: ``execve`` takes no argument or environment
string over 128 KiB (``MAX_ARG_STRLEN``); 1 MiB for the whole command plus environment
stays well inside any machine's ``ARG_MAX``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from allotment.domain.quantities import describe_size
from allotment.errors import InvalidRequest

__all__ = [
    "MAX_EXEC",
    "MAX_RUNTIME",
    "MAX_STRING",
    "MIN_MEMORY",
    "MIN_MILLICPUS",
    "check_command",
    "check_cpus",
    "check_memory",
    "check_runtime",
]

#: Most bytes of one argument or one ``NAME=value`` (the kernel's ``MAX_ARG_STRLEN``).
MAX_STRING = 128 * 1024
#: Most bytes of the command and the environment together.
MAX_EXEC = 1024 * 1024
#: Least memory a workload may ask for: less and not even an interpreter starts.
MIN_MEMORY = 16 * 1024 * 1024
#: Least CPU a workload may ask for, in thousandths of a core: the kernel's least CFS quota
#: is 1 ms per 100 ms period.
MIN_MILLICPUS = 10
#: Longest maximum runtime a workload may ask for.
MAX_RUNTIME = 365 * 24 * 3600


def check_command(command: Sequence[str] | None, env: Mapping[str, str]) -> None:
    """The command and environment fit what ``execve`` accepts, and there is a program."""
    if command is not None and (not command or not command[0]):
        raise InvalidRequest(
            '`command` is empty: give the program and its arguments, e.g. ["python", "train.py"].'
        )
    total = 0
    strings = [(f"command[{i}]", arg) for i, arg in enumerate(command or ())]
    strings += [(f"env.{name}", f"{name}={value}") for name, value in env.items()]
    for where, text in strings:
        size = len(text.encode()) + 1  # with its NUL, as the kernel
        if size > MAX_STRING:
            raise InvalidRequest(
                f"`{where}` is {describe_size(size)}; the limit for one argument or "
                f"environment variable is {describe_size(MAX_STRING)} (the kernel's). "
                "Pass large inputs in a file."
            )
        total += size
    if total > MAX_EXEC:
        raise InvalidRequest(
            f"`command` and `env` are {describe_size(total)}; the limit for a command plus its "
            f"environment is {describe_size(MAX_EXEC)}. Pass large inputs in a file."
        )


def check_cpus(millicpus: int) -> None:
    if millicpus < MIN_MILLICPUS:
        raise InvalidRequest(
            f"`cpus` is {millicpus / 1000:g}; a workload needs at least "
            f"{MIN_MILLICPUS / 1000:g} of a CPU (the kernel's least share)."
        )


def check_memory(memory: int) -> None:
    if memory < MIN_MEMORY:
        raise InvalidRequest(
            f"`memory` is {describe_size(memory)}; a workload needs at least "
            f"{describe_size(MIN_MEMORY)} to start."
        )


def check_runtime(seconds: int) -> None:
    if seconds < 1:
        raise InvalidRequest(
            "`max_runtime` is 0: it would be stopped before it started. Give at least 1 s, "
            "or leave it out for the profile's longest."
        )
    if seconds > MAX_RUNTIME:
        raise InvalidRequest(
            f"`max_runtime` is {seconds} s; the limit is {MAX_RUNTIME} s (365 days)."
        )
