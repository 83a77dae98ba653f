"""`allot config check`: every broken policy names its file, line and key, and says how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from allotment.config import load_policy, parse_policy
from allotment.config.resolve import account_paths
from allotment.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
accounts:
  physics: {}
  lab-a: {parent: physics, shares: 2}
pools:
  ws:
    nodes:
      - {name: n1, cpus: 8, memory: 32G}
      - {name: g1, cpus: 16, memory: 64G, gpus: {a100: 2}}
"""


def problems(text: str) -> list[tuple[int, str, str, str]]:
    with pytest.raises(ConfigError) as e:
        parse_policy(text, "p.yaml", environ={})
    for p in e.value.problems:
        assert p.file == "p.yaml"
    return [(p.line, p.key, p.message, p.hint) for p in e.value.problems]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")))
def test_shipped_examples_are_valid(path: Path) -> None:
    load_policy(path, environ={})


def test_department_tree_paths() -> None:
    policy = load_policy(ROOT / "examples/department.yaml", environ={})
    assert account_paths(policy) == {
        "physics": "physics",
        "lab-a": "physics/lab-a",
        "lab-b": "physics/lab-b",
        "proj-x": "physics/lab-a/proj-x",
        "proj-y": "physics/lab-a/proj-y",
    }


BROKEN = [
    # (name, text, line, key, words in message, words in hint)
    (
        "cycle",
        "accounts:\n  a: {parent: b}\n  b: {parent: c}\n  c: {parent: a}\n",
        2,
        "accounts.a.parent",
        "cycle: a → b → c → a",
        "remove `parent`",
    ),
    ("self parent", "accounts:\n  a: {parent: a}\n", 2, "accounts.a.parent", "cycle", ""),
    (
        "unknown parent",
        "accounts:\n  physics: {}\n  lab: {parent: phsyics}\n",
        3,
        "accounts.lab.parent",
        "unknown parent account 'phsyics'",
        "did you mean 'physics'",
    ),
    (
        "negative share",
        "accounts:\n  a:\n    shares: -1\n",
        3,
        "accounts.a.shares",
        "greater than or equal to 0",
        "",
    ),
    (
        "duplicate account",
        "accounts:\n  a: {}\n  a: {shares: 2}\n",
        3,
        "",
        "duplicate key",
        "once per mapping",
    ),
    (
        "misspelt key",
        "accounts:\n  a: {sahres: 2}\n",
        2,
        "accounts.a.sahres",
        "unknown key",
        "did you mean 'shares'",
    ),
    (
        "bad name",
        "accounts:\n  Lab A: {}\n",
        2,
        "accounts.Lab A",
        "'Lab A' is not a valid name",
        "lower-case",
    ),
    (
        "role twice",
        "accounts:\n  a: {members: [x], managers: [x]}\n",
        2,
        "accounts.a.members",
        "listed in both managers and members",
        "one role",
    ),
    (
        "unknown pool",
        BASE + "profiles:\n  p: {pool: wss, size: {cpus: 1, memory: 1G}}\n",
        10,
        "profiles.p.pool",
        "unknown pool 'wss'",
        "did you mean 'ws'",
    ),
    (
        "profile bigger than any node",
        BASE + "profiles:\n  p:\n    pool: ws\n    size: {cpus: 32, memory: 8G}\n",
        12,
        "profiles.p.size",
        "more than any node of pool 'ws'",
        "g1: 16 CPUs, 64G, 2× a100",
    ),
    (
        "unknown gpu model",
        BASE + "profiles:\n  p:\n    pool: ws\n    size: {cpus: 1, memory: 1G, gpus: {h100: 1}}\n",
        12,
        "profiles.p.size.gpus.h100",
        "no node of pool 'ws' has GPU model 'h100'",
        "a100",
    ),
    (
        "bad size",
        BASE + "profiles:\n  p:\n    pool: ws\n    size: {cpus: 1, memory: 4Q}\n",
        12,
        "profiles.p.size.memory",
        "'4Q' is not a size",
        "",
    ),
    (
        "bad duration",
        BASE
        + "profiles:\n  p:\n    pool: ws\n    size: {cpus: 1, memory: 1G}\n    max_runtime: soon\n",
        13,
        "profiles.p.max_runtime",
        "'soon' is not a duration",
        "",
    ),
    (
        "options exclude default",
        BASE + "profiles:\n  p:\n    pool: ws\n    size: {cpus: 4, memory: 1G}\n"
        "    options:\n      cpus: {min: 1, max: 2}\n",
        14,
        "profiles.p.options.cpus",
        "outside the range 1–2",
        "widen",
    ),
    (
        "missing size",
        BASE + "profiles:\n  p:\n    pool: ws\n",
        10,
        "profiles.p.size",
        "required key is missing",
        "add it",
    ),
    (
        "allocation to unknown account",
        BASE + "allocations:\n  - account: lab-b\n    pool: ws\n",
        10,
        "allocations[0].account",
        "unknown account 'lab-b'",
        "did you mean 'lab-a'",
    ),
    (
        "quota above pool",
        BASE + "allocations:\n  - account: lab-a\n    pool: ws\n    quota: {cpus: 100}\n",
        12,
        "allocations[0].quota.cpus",
        "more than pool 'ws' has (24)",
        "lower it",
    ),
    (
        "duplicate allocation",
        BASE
        + "allocations:\n  - {account: lab-a, pool: ws}\n  - {account: physics/lab-a, pool: ws}\n",
        11,
        "allocations[1]",
        "already has an allocation",
        "merge",
    ),
    (
        "default account not a member",
        BASE + "users:\n  zoe: {default_account: lab-a}\n",
        10,
        "users.zoe.default_account",
        "not a member or manager",
        "add 'zoe'",
    ),
    (
        "slurm pool without partition",
        "pools:\n  hpc:\n    backend: slurm\n    nodes: [{name: n1, cpus: 4, memory: 4G}]\n",
        2,
        "pools.hpc.partition",
        "names no partition",
        "sinfo",
    ),
    ("pool without nodes", "pools:\n  p: {nodes: []}\n", 2, "pools.p.nodes", "at least 1", ""),
    (
        "local pool of several nodes",
        "pools:\n  p:\n    nodes:\n      - {name: a, cpus: 1, memory: 1G}\n"
        "      - {name: b, cpus: 1, memory: 1G}\n",
        5,
        "pools.p.nodes[1]",
        "runs on this machine alone",
        "backend: slurm",
    ),
    (
        "bad backend",
        "pools:\n  p:\n    backend: kubernetes\n    nodes: [{name: n, cpus: 1, memory: 1G}]\n",
        3,
        "pools.p.backend",
        "'local' or 'slurm'",
        "",
    ),
    ("not yaml", "accounts: [a\n  b: c\n", 2, "", "not valid YAML", ""),
    ("not a mapping", "- a\n- b\n", 1, "", "must be a mapping", ""),
    ("empty", "", 0, "", "the file is empty", "examples/one-box.yaml"),
    (
        "limits for unknown account",
        BASE + "limits:\n  accounts:\n    lab-z: {cpus: 1}\n",
        11,
        "limits.accounts.lab-z",
        "unknown account 'lab-z'",
        "",
    ),
    (
        "ambiguous gpu count",
        "pools:\n  p:\n    nodes:\n      - {name: a, cpus: 8, memory: 8G, gpus: {a100: 1, h100: 1}}\n"
        "profiles:\n  q: {pool: p, size: {cpus: 1, memory: 1G, gpus: 1}}\n",
        6,
        "profiles.q.size.gpus",
        "a bare count is ambiguous",
        "gpus: {a100: 1}",
    ),
]


@pytest.mark.parametrize(
    ("line", "key", "message", "hint", "text"),
    [(b[2], b[3], b[4], b[5], b[1]) for b in BROKEN],
    ids=[b[0] for b in BROKEN],
)
def test_broken_policy_is_explained(
    line: int, key: str, message: str, hint: str, text: str
) -> None:
    found = problems(text)
    match = [p for p in found if message in p[2]]
    assert match, f"no problem says {message!r}; got {found}"
    got_line, got_key, _, got_hint = match[0]
    assert (got_line, got_key) == (line, key), found
    assert hint in got_hint


def test_wrong_parent_path_names_the_real_one() -> None:
    found = problems(
        "accounts:\n  physics: {}\n  lab-a: {parent: physics}\n  proj: {parent: chemistry/lab-a}\n"
    )
    assert found == [
        (
            4,
            "accounts.proj.parent",
            "parent path 'chemistry/lab-a' does not exist; 'lab-a' is at 'physics/lab-a'",
            "write `parent: lab-a` or `parent: physics/lab-a`.",
        ),
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = BASE.replace("  ws:\n", "  ws:\n    backend: slurm\n    partition: ws\n") + (
        "profiles:\n  p: {pool: nope, size: {cpus: 1, memory: 1G}}\n"
        "allocations:\n  - {account: nobody, pool: ws}\n"
    )
    assert {p[1] for p in problems(text)} == {"profiles.p.pool", "allocations[0].account"}


def test_environment_overrides_service_settings() -> None:
    policy = parse_policy(
        "service: {base_url: /x/}\n", environ={"ALLOTMENT_DATABASE_URL": "postgresql://h/db"}
    )
    assert policy.service.database_url == "postgresql://h/db"
    assert policy.service.base_url == "/x/"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as e:
        load_policy("/nonexistent/allotment.yaml")
    assert "no such file" in str(e.value)


def test_environment_overrides_apply_without_a_service_section() -> None:
    policy = parse_policy("accounts: {}\n", environ={"ALLOTMENT_DATABASE_URL": "postgresql://h/db"})
    assert policy.service.database_url == "postgresql://h/db"
