#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, in a folder of its own: the one the runner's tests use
# (runner/tests/common/slurm.rs calls this script), and the one to try `--executor slurm` by hand.
#
#   slurm-loopback.sh start DIR   write DIR/slurm.conf, start slurmctld and slurmd, wait for the
#                                 node to be idle, print the `export SLURM_CONF=...` line to use
#   slurm-loopback.sh stop DIR    cancel every job, `scontrol shutdown`, then kill by PID whatever
#                                 of this cluster is left (daemons, slurmstepd, job processes)
#   slurm-loopback.sh conf DIR    only write DIR/slurm.conf and DIR/gres.conf
#   slurm-loopback.sh sweep DIR   only the last step of stop
#
# Needs Debian's slurmctld, slurmd and slurm-client (Slurm 22.05), run as root, and nothing else:
# no munge (auth/none), no systemd, no cgroups. Everything the cluster writes (state, spool, logs,
# pid files) stays in DIR. Several clusters can run at once in different folders, with other ports:
#   SLURM_LOOPBACK_CTLD_PORT    slurmctld's port (default 6817)
#   SLURM_LOOPBACK_SLURMD_PORT  slurmd's port (default 6818)
#   SLURM_LOOPBACK_CPUS         the node's CPUs (default: nproc, at least 4; slurm.conf wins over
#                               the hardware, so 4 one-CPU jobs run at once even on a 2-core box)
# The node also has two fake GPUs (gres.conf.in), so `--gres=gpu:N` jobs are scheduled.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -eq 2 ] || usage
action="$1"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"
case "$dir" in
  *'|'* | *'&'* | *' '*) echo "slurm-loopback: the folder's path must not hold '|', '&' or spaces: $dir" >&2; exit 2 ;;
esac
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
# The daemons live in /usr/sbin, which a login shell's PATH may lack.
export PATH="$PATH:/usr/sbin:/usr/local/sbin"

log_tails() {
  for f in "$dir"/log/*; do
    [ -s "$f" ] || continue
    echo "--- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
}

write_conf() {
  local node cpus
  node="$(hostname -s)"
  cpus="${SLURM_LOOPBACK_CPUS:-$(nproc)}"
  if [ -z "${SLURM_LOOPBACK_CPUS:-}" ] && [ "$cpus" -lt 4 ]; then cpus=4; fi
  mkdir -p "$dir/state" "$dir/spool" "$dir/run" "$dir/log"
  sed -e "s|@DIR@|$dir|g" \
      -e "s|@CLUSTER@|loopback|g" \
      -e "s|@CTLD_HOST@|$node|g" \
      -e "s|@NODE@|$node|g" \
      -e "s|@CTLD_PORT@|${SLURM_LOOPBACK_CTLD_PORT:-6817}|g" \
      -e "s|@SLURMD_PORT@|${SLURM_LOOPBACK_SLURMD_PORT:-6818}|g" \
      -e "s|@CPUS@|$cpus|g" \
      -e "s|@MEMORY_MB@|8000|g" \
      "$here/slurm.conf.in" > "$conf"
  sed -e "s|@NODE@|$node|g" "$here/gres.conf.in" > "$dir/gres.conf"
}


start() {
  for d in slurmctld slurmd; do
    if [ -n "$(daemon_pid "$d")" ]; then
      echo "slurm-loopback: $d of $dir already runs (PID $(daemon_pid "$d"))" >&2
      exit 1
    fi
  done
  write_conf
  # -c: a clean start, no jobs or nodes from a previous run. Both daemonize and write pid files;
  # what they print before their log files are open goes to DIR/log/*.stderr.
  slurmctld -c < /dev/null >> "$dir/log/slurmctld.stderr" 2>&1 \
    || { echo "slurm-loopback: slurmctld failed to start" >&2; log_tails; exit 1; }
  slurmd < /dev/null >> "$dir/log/slurmd.stderr" 2>&1 \
    || { echo "slurm-loopback: slurmd failed to start" >&2; log_tails; exit 1; }
  local i state=""
  for i in $(seq 1 200); do
    state="$(sinfo --noheader --format=%T 2>/dev/null || true)"
    if [ "$state" = "idle" ]; then
      echo "export SLURM_CONF=$conf"
      return 0
    fi
    sleep 0.1
  done
  echo "slurm-loopback: the node of $dir is not idle after 20 s (sinfo says '${state}')" >&2
  log_tails
  exit 1
}

# STAT=(state ppid pgrp ...): the fields of /proc/PID/stat after the command name; empty if gone.
# (No subshells: the sweep below reads every process of the machine.)
read_stat() {
  local line=""
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || true
  STAT=(${line##*) })
}

# The PID in a pid file, if that process is alive (not a zombie) and is the daemon named.
daemon_pid() {
  local pid="" comm=""
  { read -r pid < "$dir/run/$1.pid"; } 2>/dev/null || return 0
  { read -r comm < "/proc/$pid/comm"; } 2>/dev/null || return 0
  read_stat "$pid"
  if [ "$comm" = "$1" ] && [ -n "${STAT[0]:-}" ] && [ "${STAT[0]}" != Z ]; then
    echo "$pid"
  fi
}

# The PIDs of this cluster's processes that are left: slurmctld, slurmd and slurmstepd with their
# working folder or an open file in DIR (slurmstepd rewrites its command line and environment,
# so those say nothing), the job scripts under DIR/spool, every process of their process groups
# (proctrack/pgid: a job is its script's process group), and any other job process whose
# SLURM_CONF is this cluster's. Never this script, nor the processes it runs in.
cluster_pids() {
  local self=" $$ $BASHPID " p pid comm groups=" " link ours words w has_conf has_job
  p=$$
  while [ "$p" -gt 1 ]; do
    read_stat "$p"
    p="${STAT[1]:-1}"
    self="$self$p "
  done
  local all=()
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    case "$self" in *" $pid "*) continue ;; esac
    read_stat "$pid"
    # Zombies hold nothing and cannot be killed.
    [ -n "${STAT[0]:-}" ] && [ "${STAT[0]}" != Z ] || continue
    all+=("$pid:${STAT[2]}")
    comm=""
    { read -r comm < "$p/comm"; } 2>/dev/null || continue
    ours=""
    case "$comm" in
      slurmctld | slurmd | slurmstepd | slurmscriptd)
        link="$(readlink "$p/cwd" 2>/dev/null || true)"
        case "$link/" in "$dir"/*) ours=1 ;; esac
        if [ -z "$ours" ]; then
          for link in "$p"/fd/*; do
            case "$(readlink "$link" 2>/dev/null || true)" in "$dir"/*) ours=1; break ;; esac
          done
        fi
        ;;
    esac
    words=()
    { mapfile -d '' -t words < "$p/cmdline"; } 2>/dev/null || true
    if [ -z "$ours" ] && [[ " ${words[*]} " == *"$dir/spool/"* ]]; then
      ours=1
      groups="$groups${STAT[2]} "
    fi
    words=()
    { mapfile -d '' -t words < "$p/environ"; } 2>/dev/null || true
    if [ -z "$ours" ]; then
      has_conf=""
      has_job=""
      for w in "${words[@]}"; do
        case "$w" in
          "SLURM_CONF=$conf") has_conf=1 ;;
          SLURM_JOB_ID=*) has_job=1 ;;
        esac
      done
      if [ -n "$has_conf" ] && [ -n "$has_job" ]; then ours=1; fi
    fi
    if [ -n "$ours" ]; then echo "$pid"; fi
  done
  for p in "${all[@]}"; do
    case "$groups" in *" ${p#*:} "*) echo "${p%%:*}" ;; esac
  done
}

sweep() {
  local pids round
  for round in 1 2 3; do
    pids="$(cluster_pids | sort -un | tr '\n' ' ')"
    pids="${pids% }"
    [ -n "$pids" ] || return 0
    # SIGKILL: a slurmstepd left behind ignores SIGTERM.
    echo "slurm-loopback: killing what is left of $dir: PIDs $pids" >&2
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
}

stop() {
  local ids i ctld slurmd
  if [ -n "$(daemon_pid slurmctld)" ]; then
    ids="$(squeue --noheader --format=%i 2>/dev/null | tr '\n' ' ' || true)"
    if [ -n "${ids// /}" ]; then
      scancel $ids 2>/dev/null || true
      # A cancelled job stays COMPLETING for KillWait (2 s) and then some.
      for i in $(seq 1 150); do
        [ -z "$(squeue --noheader --format=%i 2>/dev/null || true)" ] && break
        sleep 0.1
      done
    fi
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  for i in $(seq 1 50); do
    ctld="$(daemon_pid slurmctld)"
    slurmd="$(daemon_pid slurmd)"
    [ -z "$ctld$slurmd" ] && break
    sleep 0.1
  done
  for pid in $ctld $slurmd; do
    echo "slurm-loopback: $(cat "/proc/$pid/comm" 2>/dev/null) (PID $pid) outlived scontrol shutdown; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  sweep
}

case "$action" in
  start) start ;;
  stop) stop ;;
  conf) write_conf ;;
  sweep) sweep ;;
  *) usage ;;
esac
