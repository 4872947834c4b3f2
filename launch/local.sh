#!/usr/bin/env bash
# Train on one machine (any number of GPUs, or none): start a Ray head of this run's own, run
# `nemo-rlvr train` against it, stop that head on the way out (also on Ctrl-C or SIGTERM).
#
#   launch/local.sh [RECIPE.yaml] [key=value ...]
#   launch/local.sh recipes/tiny_cpu.yaml train.steps=20
#
# The head gets a temp dir (mktemp) and free ports of its own, so two runs on one machine do not
# collide, and only that head is stopped (never `ray stop`, which stops every Ray of the user).
# A first Ctrl-C / SIGTERM is passed to the driver once: it finishes the step, checkpoints, exits
# 75 (the same command resumes); a second one stops it at once (130). The exit status is the
# driver's. (Started with `&` from a script, bash ignores SIGINT and cannot trap it: use SIGTERM.)
# Variables (defaults in brackets):
#   RAY_NUM_CPUS [all cores]  RAY_NUM_GPUS [detected]  RAY_OBJECT_STORE_MB [Ray's default]
#   RAY_TMP_ROOT [/tmp]: the head's temp dir goes under it (Ray's socket paths must stay < 107 chars)
#   RAY_HEAD_ARGS []: more `ray start --head` flags   RAY_START_TIMEOUT_S [120]
#   RAY_STOP_TIMEOUT_S [60]: then SIGKILL   KEEP_RAY_LOGS [0]: 1 keeps the temp dir (logs) always
#   NEMO_RLVR, RAY, PYTHON: the commands [./.venv/bin/... if there, else from PATH]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv_bin() { if [[ -x "$repo/.venv/bin/$1" ]]; then echo "$repo/.venv/bin/$1"; else echo "$1"; fi; }
NEMO_RLVR=${NEMO_RLVR:-$(venv_bin nemo-rlvr)}
RAY=${RAY:-$(venv_bin ray)}
PYTHON=${PYTHON:-$(venv_bin python)}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}   # as the driver's start_ray; head and driver must agree

log() { echo "launch/local.sh: $*" >&2; }

tmp=$(mktemp -d "${RAY_TMP_ROOT:-/tmp}/rlvr-ray.XXXXXX")
# Free ports for the head's fixed-port services (GCS, Ray client server, dashboard agent); the
# others are random per process already.
read -r gcs_port client_port agent_port < <("$PYTHON" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
address="127.0.0.1:$gcs_port"

args=(start --head --block --node-ip-address=127.0.0.1 --port="$gcs_port" --temp-dir="$tmp"
      --ray-client-server-port="$client_port" --dashboard-agent-listen-port="$agent_port"
      --include-dashboard=false --disable-usage-stats)
[[ -n "${RAY_NUM_CPUS:-}" ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
[[ -n "${RAY_NUM_GPUS:-}" ]] && args+=(--num-gpus="$RAY_NUM_GPUS")
[[ -n "${RAY_OBJECT_STORE_MB:-}" ]] && args+=(--object-store-memory=$((RAY_OBJECT_STORE_MB * 1024 * 1024)))
# shellcheck disable=SC2206  # RAY_HEAD_ARGS is a list of flags
args+=(${RAY_HEAD_ARGS:-})

head_pid="" driver_pid="" rc=1

stop_head() {
    # `ray start --block` drains and stops its node's processes on SIGTERM; it runs in a session of
    # its own (setsid), so a process group kill is the fallback that reaches all of them.
    [[ -n "$head_pid" ]] || return 0
    kill -TERM "$head_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$head_pid" 2>/dev/null && ((waited < ${RAY_STOP_TIMEOUT_S:-60} * 2)); do
        sleep 0.5; waited=$((waited + 1))
    done
    if kill -0 "$head_pid" 2>/dev/null; then
        log "the Ray head did not stop in ${RAY_STOP_TIMEOUT_S:-60} s; killing its process group"
        kill -KILL -- "-$head_pid" 2>/dev/null || true
    fi
    wait "$head_pid" 2>/dev/null || true
    head_pid=""
}

on_exit() {
    trap '' INT TERM
    if [[ -n "$driver_pid" ]] && kill -0 "$driver_pid" 2>/dev/null; then   # the launcher itself failed
        kill -TERM "$driver_pid" 2>/dev/null || true
        wait "$driver_pid" 2>/dev/null || true
    fi
    stop_head
    if [[ "$rc" == 0 && "${KEEP_RAY_LOGS:-0}" != 1 ]]; then
        rm -rf "$tmp"
    else
        log "Ray logs of this run: $tmp"
    fi
    exit "$rc"
}
trap on_exit EXIT

forward() {   # one signal to the launcher -> one signal to the driver (it counts them)
    if [[ -n "$driver_pid" ]]; then
        log "SIG$1: passed to the driver (it finishes the step, checkpoints and exits 75; again: at once)"
        kill -"$1" "$driver_pid" 2>/dev/null || true
    else
        rc=$((128 + $(kill -l "$1"))); exit
    fi
}
trap 'forward INT' INT
trap 'forward TERM' TERM

log "starting a Ray head at $address (temp dir $tmp)"
setsid "$RAY" "${args[@]}" >"$tmp/head.log" 2>&1 &
head_pid=$!
waited=0
until [[ -s "$tmp/ray_current_cluster" ]]; do   # `ray start` writes it once the head is up
    if ! kill -0 "$head_pid" 2>/dev/null || ((waited >= ${RAY_START_TIMEOUT_S:-120} * 2)); then
        log "the Ray head did not come up; its log ($tmp/head.log) ends:"
        tail -n 20 "$tmp/head.log" >&2
        exit
    fi
    sleep 0.5; waited=$((waited + 1))
done

# The driver runs in a session of its own: a terminal's Ctrl-C reaches only this script, which
# passes it on once (a Ctrl-C to the whole group would count as two signals, two in a row stop at once).
export RAY_ADDRESS="$address"
export NEMO_RLVR_RESUME_COMMAND="$0 $*"   # what the driver prints to resume (not its one-off address)
setsid "$NEMO_RLVR" train "$@" "cluster.address=$address" &
driver_pid=$!
while :; do
    if wait "$driver_pid"; then rc=0; else rc=$?; fi
    kill -0 "$driver_pid" 2>/dev/null || break   # `wait` returned for a trapped signal: wait again
done
driver_pid=""
