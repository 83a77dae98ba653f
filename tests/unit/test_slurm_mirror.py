"""The Slurm mirror's pure core: the desired tree from a policy and the database's rows, the
plan between it and what Slurm holds, and the parsing of what ``sacctmgr`` and ``sinfo`` print."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from allotment.backends.slurm.mirror import (
    AccountRow,
    Association,
    BudgetRow,
    Member,
    Tree,
    desired,
    ensure_user,
    parse_associations,
    parse_tres,
    plan,
    pool_drift,
)
from allotment.config.models import Policy

CLUSTER = "c1"
OWNER = "allotment:test"


def policy(**extra: Any) -> Policy:
    doc: dict[str, Any] = {
        "accounts": {
            "inst": {"shares": 60},
            "lab": {"parent": "inst", "shares": 40},
            "proj": {"parent": "lab"},
        },
        "pools": {
            "cluster": {
                "backend": "slurm",
                "partition": "main",
                "nodes": [{"name": "n1", "cpus": 2, "memory": "4G"}],
                "rates": {"cpu": 1, "memory": 0.5},
            }
        },
    }
    doc.update(extra)
    return Policy.model_validate(doc)


ROWS = [AccountRow("inst", 60), AccountRow("inst/lab", 40), AccountRow("inst/lab/proj", 1)]
ALICE = Member("inst/lab", "alice", "jupyter-alice")


def applied(want: Tree) -> Tree:
    """What Slurm holds once a plan for ``want`` ran (as the real cluster shows in the
    integration tests)."""
    return Tree(
        cluster=want.cluster,
        accounts={**want.accounts, "root": Association("root", parent="")},
        users=dict(want.users),
        ours=frozenset(want.accounts),
    )


def lines(changes: list[Any]) -> list[str]:
    return [line for c in changes for line in c.lines]


def test_the_tree_follows_the_accounts_with_their_shares_parents_first() -> None:
    want = desired(policy(), ROWS, [ALICE], cluster=CLUSTER)
    got = plan(want, Tree(CLUSTER, {"root": Association("root")}), set(), owner=OWNER)
    assert lines(got) == [
        "add account inst (parent root, fairshare 60)",
        "add account inst.lab (parent inst, fairshare 40)",
        "add account inst.lab.proj (parent inst.lab, fairshare 1)",
        "add user jupyter-alice to inst.lab",
    ]
    assert got[1].argv == (
        "sacctmgr", "-i", "add", "account", "inst.lab", "cluster=c1", "parent=inst",
        "fairshare=40", "organization=allotment:test", "description=made by Allotment",
    )  # fmt: skip
    assert got[3].argv == (
        "sacctmgr", "-i", "add", "user", "jupyter-alice", "account=inst.lab", "cluster=c1",
    )  # fmt: skip


def test_accounts_and_associations_with_the_same_settings_are_added_by_one_command() -> None:
    rows = [AccountRow("inst", 60), *(AccountRow(f"inst/p{i}") for i in range(3))]
    members = [Member(f"inst/p{i}", "alice", "jupyter-alice") for i in range(3)]
    got = plan(desired(policy(), rows, members, cluster=CLUSTER), Tree(CLUSTER), set())
    assert [c.argv[2:5] for c in got] == [
        ("add", "account", "inst"),
        ("add", "account", "inst.p0,inst.p1,inst.p2"),
        ("add", "user", "jupyter-alice"),
    ]
    assert got[2].argv[5] == "account=inst.p0,inst.p1,inst.p2"
    assert lines(got)[-3:] == [f"add user jupyter-alice to inst.p{i}" for i in range(3)]


def test_a_users_default_account_moves_before_it_goes() -> None:
    want = desired(
        policy(), ROWS, [ALICE, Member("inst", "alice", "jupyter-alice")], cluster=CLUSTER
    )
    have = replace(applied(want), defaults={"jupyter-alice": "inst.lab"})
    smaller = desired(policy(), ROWS, [Member("inst", "alice", "jupyter-alice")], cluster=CLUSTER)
    got = plan(smaller, have, set())
    assert lines(got) == [
        "set default account of jupyter-alice inst.lab → inst",
        "remove user jupyter-alice from inst.lab",
    ]
    assert got[0].argv[-1] == "defaultaccount=inst"
    # All her associations go: nothing to move the default to, and none is moved.
    got = plan(desired(policy(), ROWS[:1], [], cluster=CLUSTER), have, set())
    assert not [x for x in lines(got) if "default" in x]


def test_applying_twice_changes_nothing() -> None:
    p = policy(
        allocations=[
            {
                "account": "lab",
                "pool": "cluster",
                "quota": {"cpus": 2, "memory": "2G"},
                "borrowing_limit": {"cpus": 1, "memory": "1G"},
            }
        ],
        limits={"accounts": {"inst": {"cpus": 2, "workloads": 3}}},
        slurm={"mirror_budgets": True},
    )
    want = desired(p, ROWS, [ALICE], [BudgetRow("inst/lab", None, 100.0)], cluster=CLUSTER)
    assert plan(want, applied(want), set(), owner=OWNER) == []


def test_a_change_of_shares_is_one_change() -> None:
    want = desired(policy(), ROWS, [ALICE], cluster=CLUSTER)
    have = applied(want)
    rows = [AccountRow("inst", 60), AccountRow("inst/lab", 25), AccountRow("inst/lab/proj", 1)]
    got = plan(desired(policy(), rows, [ALICE], cluster=CLUSTER), have, set(), owner=OWNER)
    assert lines(got) == ["set fairshare of inst.lab 40 → 25"]
    assert got[0].argv[-3:] == ("cluster=c1", "set", "fairshare=25")


def test_allocations_cap_the_subtree_and_user_limits_follow_the_scheduler_rule() -> None:
    p = policy(
        allocations=[
            {
                "account": "lab",
                "pool": "cluster",
                "quota": {"cpus": 2, "memory": "2G"},
                "borrowing_limit": {"cpus": 1.5, "memory": "1G"},
            },
            {"account": "inst", "pool": "cluster", "quota": {"cpus": 4}},  # borrows freely
        ],
        limits={
            "accounts": {"inst": {"cpus": 3, "workloads": 5}, "lab": {"cpus": 8, "memory": "1G"}},
            "users": {"bob": {"workloads": 1}},
        },
    )
    bob = Member("inst/lab", "bob", "jupyter-bob")
    want = desired(p, ROWS, [ALICE, bob], cluster=CLUSTER)
    assert want.accounts["inst.lab"].grp_tres == {"cpu": 3, "mem": 3072, "gres/gpu": 0}
    assert want.accounts["inst"].grp_tres == {}
    alice = want.users[("inst.lab", "jupyter-alice")]
    assert (alice.grp_tres, alice.max_jobs) == ({"cpu": 3, "mem": 1024}, 5)
    own = want.users[("inst.lab", "jupyter-bob")]
    assert (own.grp_tres, own.max_jobs) == ({}, 1)


def test_a_manager_may_charge_every_account_below_theirs() -> None:
    dean = Member("inst/lab", "dean", "jupyter-dean", manager=True)
    want = desired(policy(), ROWS, [dean], cluster=CLUSTER)
    assert sorted(want.users) == [
        ("inst.lab", "jupyter-dean"),
        ("inst.lab.proj", "jupyter-dean"),
    ]


def test_an_archived_account_refuses_new_jobs_and_comes_back() -> None:
    want = desired(policy(), ROWS, [ALICE], cluster=CLUSTER)
    rows = [AccountRow("inst", 60), AccountRow("inst/lab", 40, archived=True), ROWS[2]]
    archived = desired(policy(), rows, [ALICE], cluster=CLUSTER)
    got = plan(archived, applied(want), set(), owner=OWNER)
    assert lines(got) == ["archive account inst.lab (its history is kept)"]
    assert got[0].argv[-1] == "GrpSubmitJobs=0"
    back = plan(want, applied(archived), set(), owner=OWNER)
    assert lines(back) == ["restore account inst.lab from archive"]
    assert back[0].argv[-1] == "GrpSubmitJobs=-1"


def test_an_account_with_usage_is_archived_one_without_is_removed() -> None:
    want = desired(policy(), ROWS, [ALICE], cluster=CLUSTER)
    have = applied(want)
    smaller = desired(policy(), ROWS[:1], [], cluster=CLUSTER)
    got = plan(smaller, have, {"inst.lab.proj"}, owner=OWNER)
    # proj has jobs: archived; lab lies above a kept account: archived too, not deleted.
    assert lines(got) == [
        "archive account inst.lab.proj (it has usage)",
        "archive account inst.lab (an account below it has usage)",
    ]
    got = plan(smaller, have, set(), owner=OWNER)
    assert lines(got) == [
        # Slurm refuses to take a user's last association (their default account) away.
        "remove user jupyter-alice (no account left)",
        "remove account inst.lab.proj",
        "remove account inst.lab",
    ]
    assert got[0].argv[2:] == ("delete", "user", "where", "name=jupyter-alice", "cluster=c1")
    # One command: Slurm checks default accounts per command.
    assert got[1].argv[2:] == (
        "delete", "account", "where", "name=inst.lab.proj,inst.lab", "cluster=c1",
    )  # fmt: skip


def test_accounts_allotment_did_not_make_are_never_touched() -> None:
    want = desired(policy(), ROWS, [], cluster=CLUSTER)
    have = applied(want)
    foreign = {
        "physics": Association("physics", parent="root", fairshare=7),
        "inst": replace(have.accounts["inst"], fairshare=3),
    }
    have = Tree(
        CLUSTER,
        {**have.accounts, **foreign},
        {("physics", "ada"): Association("physics", "ada")},
        ours=frozenset({"inst.lab", "inst.lab.proj"}),
    )
    got = plan(want, have, set(), owner=OWNER)
    assert len(got) == 1 and not got[0].argv
    assert got[0].line.startswith("account inst exists in Slurm but Allotment did not make it")


def test_members_who_go_lose_their_association_except_where_everyone_may_charge() -> None:
    want = desired(policy(), ROWS, [ALICE], cluster=CLUSTER)
    none = desired(policy(), ROWS, [], cluster=CLUSTER)
    got = plan(none, applied(want), set(), owner=OWNER)
    assert lines(got) == ["remove user jupyter-alice from inst.lab"]
    # Her only association: the user goes whole (Slurm refuses to take the last one away).
    assert got[0].argv[2:] == ("delete", "user", "where", "name=jupyter-alice", "cluster=c1")
    # Where she keeps another, only the one association goes.
    at_inst = Member("inst", "alice", "jupyter-alice")
    both = applied(desired(policy(), ROWS, [ALICE, at_inst], cluster=CLUSTER))
    got = plan(desired(policy(), ROWS, [at_inst], cluster=CLUSTER), both, set())
    assert [c.argv[2:] for c in got] == [
        ("delete", "user", "where", "name=jupyter-alice", "account=inst.lab", "cluster=c1"),
    ]
    everyone = desired(policy(), ROWS, [], cluster=CLUSTER, everyone=["inst/lab"])
    assert plan(everyone, applied(want), set(), owner=OWNER) == []


def test_first_use_association_carries_the_limits() -> None:
    have = Tree(CLUSTER, {"inst.lab": Association("inst.lab", parent="inst")})
    assoc = Association("inst.lab", "jupyter-zoe", grp_tres={"cpu": 2}, max_jobs=4)
    got = ensure_user(have, "inst.lab", "jupyter-zoe", assoc)
    assert got[0].argv[2:] == (
        "add", "user", "jupyter-zoe", "account=inst.lab", "cluster=c1", "GrpTRES=cpu=2",
        "MaxJobs=4",
    )  # fmt: skip
    with_it = replace(have, users={("inst.lab", "jupyter-zoe"): assoc})
    assert ensure_user(with_it, "inst.lab", "jupyter-zoe", assoc) == []


def test_limits_on_resources_slurm_does_not_count_are_left_out() -> None:
    p = policy(
        allocations=[
            {"account": "lab", "pool": "cluster", "quota": {"cpus": 2}, "borrowing_limit": {}}
        ]
    )
    want = desired(p, ROWS, [], cluster=CLUSTER)
    have = replace(applied(desired(policy(), ROWS, [], cluster=CLUSTER)), tres=frozenset({"cpu"}))
    got = plan(want, have, set(), owner=OWNER)
    assert lines(got) == ["set GrpTRES of inst.lab none → cpu=2"]
    assert got[0].argv[-1] == "GrpTRES=cpu=2"
    after = replace(have, accounts={**have.accounts, "inst.lab": replace(
        have.accounts["inst.lab"], grp_tres={"cpu": 2})})  # fmt: skip
    assert plan(want, after, set(), owner=OWNER) == []


def test_a_hand_made_limit_is_cleared_and_a_hand_made_share_undone() -> None:
    want = desired(policy(), ROWS, [], cluster=CLUSTER)
    have = applied(want)
    lab = replace(have.accounts["inst.lab"], fairshare=5, grp_tres={"node": 1}, max_jobs=9)
    got = plan(want, replace(have, accounts={**have.accounts, "inst.lab": lab}), set())
    assert lines(got) == [
        "set fairshare of inst.lab 5 → 40; set GrpTRES of inst.lab node=1 → none; "
        "set MaxJobs of inst.lab 9 → none"
    ]
    assert got[0].argv[-3:] == ("fairshare=40", "GrpTRES=node=-1", "MaxJobs=-1")


def test_a_moved_account_is_a_new_one_in_slurm_and_the_old_one_goes() -> None:
    """Slurm names follow paths: a move makes another name, and the old one is removed (or
    archived, with its usage)."""
    want = desired(policy(), ROWS, [], cluster=CLUSTER)
    rows = [*ROWS[:2], AccountRow("inst/proj", 1)]
    got = plan(desired(policy(), rows, [], cluster=CLUSTER), applied(want), set())
    assert "add account inst.proj (parent inst, fairshare 1)" in lines(got)
    assert "remove account inst.lab.proj" in lines(got)


@settings(max_examples=50, deadline=None)
@given(
    cpus=st.integers(1, 64),
    gib=st.integers(0, 512),
    gpus=st.integers(0, 8),
    rate_cpu=st.floats(0, 5),
    rate_mem=st.floats(0, 1),
    rate_gpu=st.floats(0, 10),
    money=st.floats(0.01, 1e6),
)
def test_budget_minutes_never_cost_more_than_the_budget(
    cpus: int, gib: int, gpus: int, rate_cpu: float, rate_mem: float, rate_gpu: float, money: float
) -> None:
    p = Policy.model_validate(
        {
            "slurm": {"mirror_budgets": True},
            "accounts": {"lab": {}},
            "pools": {
                "cluster": {
                    "backend": "slurm",
                    "partition": "main",
                    "nodes": [{"name": "n1", "cpus": 64, "memory": "512G", "gpus": {"a100": 8}}],
                    "rates": {"cpu": rate_cpu, "memory": rate_mem, "gpu": {"a100": rate_gpu}},
                }
            },
            "allocations": [
                {
                    "account": "lab",
                    "pool": "cluster",
                    "quota": {"cpus": cpus, "memory": f"{gib}G", "gpus": {"a100": gpus}},
                }
            ],
        }
    )
    want = desired(p, [AccountRow("lab")], [], [BudgetRow("lab", "cluster", money)], cluster="c")
    mins = want.accounts["lab"].grp_tres_mins
    cost = (
        mins.get("cpu", 0) / 60 * rate_cpu
        + mins.get("mem", 0) / 1024 / 60 * rate_mem
        + mins.get("gres/gpu", 0) / 60 * rate_gpu
    )
    assert cost <= money * (1 + 1e-9)
    if any(n * r > 0 for n, r in ((cpus, rate_cpu), (gib, rate_mem), (gpus, rate_gpu))):
        assert mins  # something costs money: the budget is mirrored


def test_soft_budgets_and_budgets_without_mirroring_are_not_mirrored() -> None:
    soft = [BudgetRow("inst/lab", None, 10.0, hard_stop=False)]
    on = policy(slurm={"mirror_budgets": True})
    assert desired(on, ROWS, [], soft, cluster=CLUSTER).accounts["inst.lab"].grp_tres_mins == {}
    hard = [BudgetRow("inst/lab", None, 10.0)]
    assert (
        desired(policy(), ROWS, [], hard, cluster=CLUSTER).accounts["inst.lab"].grp_tres_mins == {}
    )
    assert desired(on, ROWS, [], hard, cluster=CLUSTER).accounts["inst.lab"].grp_tres_mins


# What `sacctmgr -P -n show assoc cluster=C format=ASSOC_FORMAT` printed on the test cluster.
SHOWN = """root|||1||||
root||root|1||||
inst|root||60||||
inst.lab|inst||40|cpu=3,mem=3G|cpu=3999,mem=4095999M||
inst.lab||jupyter-alice|1|cpu=2|||3
old|root||1|||0|
"""


def test_what_sacctmgr_prints_is_read_back_exactly() -> None:
    accounts, users = parse_associations(SHOWN)
    assert accounts["inst.lab"] == Association(
        "inst.lab",
        parent="inst",
        fairshare=40,
        grp_tres={"cpu": 3, "mem": 3072},
        grp_tres_mins={"cpu": 3999, "mem": 4095999},
    )
    assert accounts["old"].grp_submit_jobs == 0
    assert users[("inst.lab", "jupyter-alice")] == Association(
        "inst.lab", "jupyter-alice", fairshare=1, grp_tres={"cpu": 2}, max_jobs=3
    )
    assert ("root", "root") in users
    assert parse_tres("cpu=4,mem=2T,gres/gpu=2") == {"cpu": 4, "mem": 2 * 1024**2, "gres/gpu": 2}


SINFO = """n1|main|2|4096|(null)
n1|debug|2|4096|(null)
n2|main|2|4096|gpu:a100:2(S:0)
n3|main|2|4096|(null)
"""


def test_pools_are_compared_with_the_partitions() -> None:
    p = policy(
        pools={
            "cluster": {
                "backend": "slurm",
                "partition": "main",
                "nodes": [
                    {"name": "n1", "cpus": 2, "memory": "4G"},
                    {"name": "n2", "cpus": 4, "memory": "4G", "gpus": {"a100": 2}},
                    {"name": "n9", "cpus": 2, "memory": "4G"},
                ],
            },
            "other": {
                "backend": "slurm",
                "partition": "gpu",
                "nodes": [{"name": "n1", "cpus": 2, "memory": "4G"}],
            },
            "box": {"nodes": [{"name": "here", "cpus": 2, "memory": "4G"}]},
        }
    )
    assert pool_drift(p, SINFO) == [
        "pool cluster: node n2 has 2 CPUs in Slurm, 4 here",
        "pool cluster: node n9 is not in Slurm's partition main",
        "pool cluster: Slurm's partition main has node n3, not declared here",
        "pool other: Slurm has no partition gpu",
    ]
