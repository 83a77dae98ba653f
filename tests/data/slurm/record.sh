#!/usr/bin/env bash
# Records the outputs of real Slurm commands into this directory, for the parsers' unit tests.
#   tests/data/slurm/record.sh      (root; starts its own 3-node cluster with accounting)
# README.md says what each file shows. POSIX users ada and grace are created when missing and
# removed again afterwards.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
state=${RECORD_STATE:-/var/tmp/laneA-slurm}
work=/var/tmp/slurm-record
export SLURM_NODES=3 SLURM_ACCOUNTING=1 SLURM_PORT_BASE=${RECORD_PORT_BASE:-17100}
export SLURM_CLUSTER=allottest
made=""
eval "$("$root/scripts/slurm" start "$state" | tail -1)"
trap '"$root/scripts/slurm" stop "$state"; for u in $made; do userdel "$u"; done' EXIT

for u in ada grace; do id "$u" >/dev/null 2>&1 || { useradd --no-create-home "$u"; made="$made $u"; }; done
mkdir -p "$work" && chmod 1777 "$work"
as() { local u=$1; shift; runuser -u "$u" -- "$@"; }
sb() { local u=$1; shift; as "$u" sbatch --parsable -D "$work" -o /dev/null "$@"; }
state_of() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -1 | cut -d= -f2; }
wait_state() { # job states… : waits up to 120 s
  local j=$1; shift
  for _ in $(seq 600); do
    for s in "$@"; do [ "$(state_of "$j")" = "$s" ] && return 0; done
    sleep 0.2
  done
  echo "job $j is $(state_of "$j"), not $*" >&2; return 1
}
out() { cat >"$here/$1"; echo "recorded $1" >&2; }

# Accounts: root / {physics 60 / {astro, hep}, chemistry 40}; ada in astro (default) and
# chemistry, grace in hep.
sacctmgr -i add account physics fairshare=60 description="Physics" organization=science >/dev/null
sacctmgr -i add account astro,hep parent=physics fairshare=1 organization=science >/dev/null
sacctmgr -i add account chemistry fairshare=40 description="Chemistry" organization=science >/dev/null
sacctmgr -i add user ada account=astro,chemistry defaultaccount=astro >/dev/null
sacctmgr -i add user grace account=hep defaultaccount=hep >/dev/null
sacctmgr -i modify user grace where account=hep set maxjobs=50 grptresmins=cpu=6000 >/dev/null
sacctmgr -P -n show assoc format=cluster,account,user,parentname,share,grptresmins,grptres,maxjobs,qos,defaultqos \
  | out sacctmgr_assoc.txt
sacctmgr -P -n list assoc tree format=account,user,share | out sacctmgr_assoc_tree.txt
sacctmgr -P show account format=account,descr,org | out sacctmgr_account.txt
sacctmgr -P show user format=user,defaultaccount,admin | out sacctmgr_user.txt
sacctmgr -P -n show account withassoc format=account,parentname,user,share | out sacctmgr_account_withassoc.txt
scontrol show config | grep -i ClusterName | out scontrol_config_clustername.txt
sinfo --json | out sinfo_idle.json

t0=$(date +%Y-%m-%dT%H:%M:%S)
# Short jobs that end by themselves: COMPLETED, FAILED (exit 3), OUT_OF_MEMORY.
ok=$(sb ada -J ok --wrap 'true')
failed=$(sb ada -J exit3 -A chemistry --wrap 'echo bad; exit 3')
oom=$(sb grace -J oom --mem=100M --acctg-freq=1 --wrap \
  'python3 -c "b = bytearray(400 * 1024 * 1024); import time; time.sleep(2)"')
wait_state "$ok" COMPLETED
wait_state "$failed" FAILED
wait_state "$oom" OUT_OF_MEMORY FAILED
sbatch --test-only -D "$work" -n1 --wrap true 2>&1 | out sbatch_test_only_now.txt

# A full cluster (3 nodes x 2 CPUs): a 2-node job on n1,n3; grace's job on n2 (it times out after
# 1 minute); an array of 4 (3 tasks run, one waits); two 2-CPU jobs wait (Resources, Priority).
two=$(sb ada -J two-nodes -N2 -n2 -w n1,n3 --time=10 --wrap 'srun sleep 300')
onn2=$(sb grace -J on-n2 -w n2 -n1 --time=1 --wrap 'sleep 300')
wait_state "$two" RUNNING
wait_state "$onn2" RUNNING
arr=$(sb ada -J arr --array=0-3 -n1 --time=10 --wrap 'sleep 300')
sleep 1
big=$(sb grace -J big -c2 --time=10 --wrap 'sleep 30')
big2=$(sb ada -J big2 -c2 -A chemistry --time=10 --wrap 'sleep 30')
sleep 2
squeue --json | out squeue_full.json
squeue -h -o '%i|%T|%r|%u|%a|%P|%D|%C|%N|%S|%l|%M' | out squeue_full.txt
as ada sbatch --test-only -D "$work" -n1 --time=5 --wrap true 2>&1 | out sbatch_test_only_wait.txt
# Backfill computes expected starts every bf_interval (30 s): wait for them.
for _ in $(seq 80); do
  squeue -h --start -o '%i|%S|%r' | grep -q -v 'N/A' && break; sleep 0.5
done
squeue --start -h -o '%i|%S|%r' | out squeue_start.txt
squeue --start --json >"$here/squeue_start.json" 2>"$here/squeue_start_json.stderr" || true
[ -s "$here/squeue_start_json.stderr" ] || rm -f "$here/squeue_start_json.stderr"
scontrol show job -o "$big" | out scontrol_show_job_pending.txt

# CANCELLED: two pending jobs, the running array and the 2-node job.
scancel "$big" "$big2" "$arr" "$two"
for j in "$two" "$big"; do wait_state "$j" CANCELLED; done

# NODE_FAIL: n3 killed under two jobs, one that may not be requeued and one that is (the
# default). n2 drained meanwhile (grace's job still runs there until its time limit).
nf=$(sb ada -J node-fail -w n3 -n1 --no-requeue --wrap 'sleep 300')
rq=$(sb grace -J requeued -w n3 -n1 --wrap 'sleep 300')
wait_state "$nf" RUNNING
wait_state "$rq" RUNNING
"$root/scripts/slurm" node-kill "$state" n3
scontrol update NodeName=n2 State=DRAIN Reason="disk check by admin"
for _ in $(seq 600); do sinfo -h -N -n n3 -o %T | grep -qx 'down\*' && break; sleep 0.2; done
wait_state "$nf" NODE_FAIL
wait_state "$rq" PENDING
sinfo --json | out sinfo_drained_down.json
sinfo -h -N -o '%N|%T|%E|%H|%C|%m|%e' | out sinfo_drained_down.txt
squeue --json | out squeue_requeued.json
squeue -h -t all -o '%i|%T|%r' | out squeue_requeued.txt

# TIMEOUT: grace's job on n2 (slurmctld checks time limits every 30 s).
wait_state "$onn2" TIMEOUT
sinfo -h -N -o '%N|%T|%E' | out sinfo_drained.txt

# The requeued job runs again once n3 is back, and is then cancelled.
"$root/scripts/slurm" node-start "$state" n3
scontrol update NodeName=n3 State=RESUME
scontrol update NodeName=n2 State=RESUME
wait_state "$rq" RUNNING
sleep 1
scancel "$rq"
wait_state "$rq" CANCELLED
sleep 2
sacct --json -a -S "$t0" -X | out sacct_X.json
sacct --json -a -S "$t0" | out sacct_steps.json
# (sacct --json lists every run of a requeued job already: -D changes nothing there.)
sacct -a -S "$t0" -D -P -o JobID,JobName,User,Account,State,ExitCode,DerivedExitCode,Reason,NodeList,Start,End,Elapsed,ReqTRES,AllocTRES,MaxRSS \
  | out sacct_duplicates.txt
sshare -a -P -l | out sshare_all.txt
{
  echo "ok=$ok failed=$failed oom=$oom two_nodes=$two on_n2=$onn2 array=$arr big=$big big2=$big2"
  echo "node_fail=$nf requeued=$rq since=$t0"
} | out jobs.txt
