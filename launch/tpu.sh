#!/usr/bin/env bash
# electra-jax on a Cloud TPU VM slice (one host or a pod of several): `setup` makes a Python venv on
# every worker and installs the package into it; `train` starts the same command on every worker and
# jax.distributed joins them (JAX finds the slice through the TPU metadata server).
#
#   launch/tpu.sh [--dry-run] ACTION [extra gcloud flags...]
#
#   create          a TPU VM slice now (on-demand; extra flags such as --spot go to gcloud), then wait
#   create-queued   a queued resource (--spot, --reserved, ...): waits until it is ACTIVE and the node
#                   READY, fails on FAILED/SUSPENDED; the request expires unless granted within
#                   VALID_UNTIL (default 6h; VALID_UNTIL= for none, or pass --valid-until-duration)
#   wait            the same wait, for a request made earlier (WAIT_TIMEOUT_S, default 6 h)
#   status          the queued resource's and the node's state, and each worker's run
#   setup           a venv on every worker (uv, Python PYTHON_VERSION), electra-jax pinned by
#                   CONSTRAINTS (default: this checkout's constraints.txt, as CI installs it)
#   train           starts the run on every worker in the background (rerun: resumes); a CONFIG that is
#                   a file here is copied to every worker first
#   logs            follows a worker's newest log (WORKER=0 by default; WORKER=3, WORKER=all)
#   collect-logs    every worker's logs (all attempts) into LOGS_DIR here
#   stop            SIGTERM by pid on every worker: each saves the step and exits (waits for it)
#   delete          collects the logs, then deletes a `create` TPU (delete-queued: a create-queued one)
#   run             create-queued -> wait -> setup -> train -> watch -> collect-logs -> delete-queued,
#                   deleting even after a failure or Ctrl-C (KEEP_TPU=1 keeps it); a preempted slice
#                   (spot) is deleted and requested again, and training resumes (MAX_RECREATES, 10)
#
# Required: PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE (v4-32, v5litepod-16, v5p-64, v6e-16, ...; v5e-16
# is taken as v5litepod-16). For `setup`: REPO, what pip installs on every worker (a git URL such as
# git+https://github.com/you/electra-jax.git). For `train`: CONFIG (a preset: tiny, small, small_plus,
# base, large; or a config file here), DATA and WORKDIR (gs:// paths every worker can read).
# Optional: RUNTIME_VERSION (default: the one the Cloud TPU docs give for the accelerator),
# PYTHON_VERSION (3.11, what constraints.txt was tested with), EXTRAS (tpu), TRAIN_ARGS (extra pretrain
# flags, e.g. "--config.batch_size=1024"), AUTOCHECKPOINT=1 (create, create-queued, run: gcloud alpha's
# --autocheckpoint-enabled, v2-v4 and v5e only: a maintenance event then SIGTERMs the run, which saves
# its step, instead of stopping the host at once), POLL_S (30, seconds between state checks).
# PLAN=1 (create, create-queued, run): first compile the run (CONFIG, TRAIN_ARGS' --config.*
# overrides) for ACCELERATOR_TYPE here with `electra-jax plan` (needs the tpu extra here, no TPU), and
# create nothing unless it fits.
# The TPU compiler flags (electra_jax/xla_flags.py: async collectives overlapped with compute, sharded
# rbg keys) are added by electra-jax itself on every worker; set LIBTPU_INIT_ARGS to override one.
# --dry-run prints every command instead of running it.
#
# Runs with macOS's bash 3.2: no bash 4 features, and empty arrays expanded as ${a[@]+"${a[@]}"}.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
ACTION="${1:-}"
shift || true
EXTRA=("$@")

# On every worker, under its $HOME (expanded there, not here): the venv, one log per `train`
# (train-1.log, train-2.log, ...; electra-jax.log links to the newest), the run's pid and exit status.
# shellcheck disable=SC2016
VENV='$HOME/electra-jax-venv'
# shellcheck disable=SC2016
LOGDIR='$HOME/electra-jax-logs'
# shellcheck disable=SC2016
LOG='$HOME/electra-jax.log'
# shellcheck disable=SC2016
PID='$HOME/electra-jax.pid'
# shellcheck disable=SC2016
EXIT='$HOME/electra-jax.exit'
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
POLL_S="${POLL_S:-30}"

die() {  # a mistake in the input: one line, exit 2, before anything is created
  echo "launch/tpu.sh: $*" >&2
  exit 2
}

fail() {  # something went wrong out there: one line, exit 1
  echo "launch/tpu.sh: $*" >&2
  exit 1
}

say() { echo "# $*" >&2; }

need() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "set $name (see the top of this script)"
  done
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# ACCELERATOR_TYPE as gcloud names it, WORKERS (hosts in the slice) and RUNTIME (the software version
# the Cloud TPU docs give for it; cloud.google.com/tpu/docs/runtimes). v2-v4 and v5p sizes count
# TensorCores (8 per host), v5e and v6e sizes count chips (4 per host beyond a single 8-chip host).
# Anything else is refused here, before any command runs.
accelerator() {
  local kind="${ACCELERATOR_TYPE%-*}" size="${ACCELERATOR_TYPE##*-}"
  [[ "$size" =~ ^[0-9]+$ && "$ACCELERATOR_TYPE" == *-* ]] || die "ACCELERATOR_TYPE $ACCELERATOR_TYPE is not TYPE-SIZE (e.g. v4-32, v5litepod-16)"
  if [[ "$kind" == v5e ]]; then
    say "ACCELERATOR_TYPE $ACCELERATOR_TYPE: gcloud calls it v5litepod-$size; using that"
    kind=v5litepod
    ACCELERATOR_TYPE="v5litepod-$size"
  fi
  case "$kind" in
    v2|v3|v4|v5p)
      (( size >= 8 && size % 8 == 0 )) || die "ACCELERATOR_TYPE $ACCELERATOR_TYPE: $kind sizes count TensorCores, a multiple of 8 (${kind}-8, ${kind}-32, ...)"
      WORKERS=$(( size / 8 )) ;;
    v5litepod|v6e)
      case "$size" in 1|4|8|16|32|64|128|256) ;; *) die "ACCELERATOR_TYPE $ACCELERATOR_TYPE: $kind sizes are 1, 4, 8, 16, 32, 64, 128, 256 (chips)" ;; esac
      WORKERS=$(( size > 8 ? size / 4 : 1 )) ;;
    *) die "unknown ACCELERATOR_TYPE $ACCELERATOR_TYPE (v2/v3/v4/v5p/v5litepod/v6e-SIZE)" ;;
  esac
  case "$kind" in
    v2|v3|v4) RUNTIME=tpu-ubuntu2204-base ;;
    v5p) RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod) RUNTIME=v2-alpha-tpuv5-lite ;;
    v6e) RUNTIME=v2-alpha-tpuv6e ;;
  esac
  RUNTIME="${RUNTIME_VERSION:-$RUNTIME}"
  if [[ "${AUTOCHECKPOINT:-0}" == 1 && "$kind" != v[234] && "$kind" != v5litepod ]]; then
    die "AUTOCHECKPOINT=1: Cloud TPU offers Autocheckpoint on v2-v4 and v5e only, not $kind"
  fi
}

ssh_all() {  # ssh_all COMMAND [more gcloud flags]: COMMAND on every worker
  local command="$1"
  shift
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$command" "$@"
}

copy_to_workers() {  # copy_to_workers LOCAL_FILE NAME: to ~/NAME on every worker
  run gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2" --project="$PROJECT" --zone="$ZONE" --worker=all
}

has_flag() {  # has_flag --name: is --name or --name=... among the extra gcloud flags?
  local arg
  for arg in ${EXTRA[@]+"${EXTRA[@]}"}; do
    [[ "$arg" == "$1" || "$arg" == "$1="* ]] && return 0
  done
  return 1
}

# The state of the queued resource and of the node, empty when there is none (gcloud's NOT_FOUND).
qr_state() {
  gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --format='value(state.state)' \
    2>/dev/null || true
}
node_state() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --format='value(state)' 2>/dev/null || true
}

# Until the queued resource (if there is one) is ACTIVE and the node READY. FAILED, SUSPENDED (a spot
# slice taken back, an expired request) and a preempted node fail at once; WAIT_TIMEOUT_S bounds the rest.
wait_ready() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# every ${POLL_S}s until ACTIVE and READY (at most ${WAIT_TIMEOUT_S:-21600}s):"
    run gcloud compute tpus queued-resources describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --format='value(state.state)'
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --format='value(state)'
    return 0
  fi
  local start=$SECONDS limit="${WAIT_TIMEOUT_S:-21600}" qr node now last=""
  while true; do
    qr=$(qr_state)
    node=$(node_state)
    case "$qr" in
      FAILED|SUSPENDING|SUSPENDED)
        fail "queued resource $TPU_NAME is $qr (not granted in time, or taken back): launch/tpu.sh delete-queued, then create-queued again" ;;
    esac
    case "$node" in
      PREEMPTED|TERMINATED|STOPPED) fail "TPU $TPU_NAME is $node: delete it and create it again (a preempted slice cannot be restarted)" ;;
    esac
    if [[ "$node" == READY && ( -z "$qr" || "$qr" == ACTIVE ) ]]; then
      say "$TPU_NAME is READY"
      return 0
    fi
    [[ -n "$qr$node" ]] || fail "no queued resource or TPU named $TPU_NAME in $ZONE (create or create-queued first)"
    now="queued resource ${qr:-none}, node ${node:-not created yet}"
    [[ "$now" == "$last" ]] || say "$(date -u +%H:%M:%S) $TPU_NAME: $now"
    last="$now"
    (( SECONDS - start < limit )) || fail "still not READY after ${limit}s ($now); the request stays queued: launch/tpu.sh delete-queued withdraws it"
    sleep "$POLL_S"
  done
}

require_ready() {  # setup and train need a READY node: say so instead of ssh's NOT_FOUND
  [[ "$DRY_RUN" == 1 ]] && return 0
  local node
  node=$(node_state)
  case "$node" in
    READY) return 0 ;;
    PREEMPTED|TERMINATED|STOPPED)
      fail "TPU $TPU_NAME is $node: a preempted slice cannot be restarted; delete-queued (or delete), create-queued again, setup, train (it resumes)" ;;
  esac
  fail "TPU $TPU_NAME is ${node:-not there} (queued resource: $(qr_state | grep . || echo none)), not READY: launch/tpu.sh wait"
}

autocheckpoint() {  # the gcloud track and flag for AUTOCHECKPOINT=1 (alpha only)
  if [[ "${AUTOCHECKPOINT:-0}" == 1 ]]; then
    track=(alpha)
    autocheckpoint_flag=(--autocheckpoint-enabled)
  else
    track=()
    autocheckpoint_flag=()
  fi
}

# The opt-in fit check before paying for a slice (PLAN=1).
plan_first() {
  [[ "${PLAN:-0}" == 1 ]] || return 0
  need CONFIG
  local overrides=() arg
  for arg in ${TRAIN_ARGS:-}; do
    [[ "$arg" == --config.* ]] && overrides+=("$arg")
  done
  # shellcheck disable=SC2086,SC2153  # PLAN_CLI may be a command with arguments; CONFIG is set (need)
  run ${PLAN_CLI:-electra-jax} plan --config "$CONFIG" --target "$ACCELERATOR_TYPE" ${overrides[@]+"${overrides[@]}"} \
    || die "the run does not fit $ACCELERATOR_TYPE (electra-jax plan above); nothing was created"
}

create() {
  plan_first
  autocheckpoint
  run gcloud ${track[@]+"${track[@]}"} compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME" ${autocheckpoint_flag[@]+"${autocheckpoint_flag[@]}"} \
    ${EXTRA[@]+"${EXTRA[@]}"}
  wait_ready
}

create_queued() {
  plan_first
  autocheckpoint
  # A request granted at 3 a.m. bills from then on: unless told otherwise it expires after VALID_UNTIL.
  local valid=()
  if ! has_flag --valid-until-duration && ! has_flag --valid-until-time && [[ -n "${VALID_UNTIL-6h}" ]]; then
    [[ "${VALID_UNTIL-6h}" =~ ^[0-9]+[smhd]$ ]] || die "VALID_UNTIL=$VALID_UNTIL is not a duration such as 6h, 90m or 2d"
    valid=(--valid-until-duration="${VALID_UNTIL-6h}")
    say "the request expires unless granted within ${VALID_UNTIL-6h} (VALID_UNTIL=...; VALID_UNTIL= for never)"
  fi
  run gcloud ${track[@]+"${track[@]}"} compute tpus queued-resources create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
    --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME" \
    ${valid[@]+"${valid[@]}"} ${autocheckpoint_flag[@]+"${autocheckpoint_flag[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  wait_ready
}

setup() {
  need REPO
  require_ready
  # Pinned as CI installs it (README: pip install -c constraints.txt): the versions the suite passed
  # with, libtpu included. CONSTRAINTS=none installs the newest releases instead.
  local constraints="${CONSTRAINTS:-$CHECKOUT/constraints.txt}" pin=""
  if [[ "$constraints" != none ]]; then
    [[ -f "$constraints" ]] || die "CONSTRAINTS=$constraints: no such file (CONSTRAINTS=none to install unpinned)"
    copy_to_workers "$constraints" electra-jax-constraints.txt
    # shellcheck disable=SC2016
    pin='-c $HOME/electra-jax-constraints.txt'
  fi
  # The images' python3 is 3.10 and the package needs 3.11+: uv brings the Python it asks for into
  # a venv, and everything after runs that venv's interpreter by absolute path (a non-interactive
  # ssh shell has no user bin directory on PATH).
  local spec
  spec=$(printf '%q' "electra-jax[${EXTRAS-tpu}] @ $REPO")
  ssh_all "set -euo pipefail
python3 -m pip install --user --quiet --upgrade uv
\$HOME/.local/bin/uv venv --quiet --allow-existing --python ${PYTHON_VERSION:-3.11} $VENV
\$HOME/.local/bin/uv pip install --quiet --python $VENV/bin/python $pin $spec
$VENV/bin/electra-jax --version"
}

train() {
  need CONFIG DATA WORKDIR
  require_ready
  # A config file of the user's goes to every worker (~/electra-jax-config-NAME.py); a preset is
  # installed there already. A ":arg" suffix (ml_collections' config argument) stays.
  local config="$CONFIG" file="${CONFIG%%:*}" suffix=""
  [[ "$CONFIG" == *:* ]] && suffix=":${CONFIG#*:}"
  if [[ -f "$file" ]]; then
    copy_to_workers "$file" "electra-jax-config-$(basename "$file")"
    config="\$HOME/electra-jax-config-$(basename "$file")$suffix"
  else
    config=$(printf '%q' "$config")
  fi
  # One run per worker at a time: a live pid file refuses (stop it first). A process still holding the
  # TPU is killed only if it is an earlier electra-jax run from this venv (it did not exit); anything
  # else (another user's job) is named and left alone, and this worker refuses to start.
  # The run: nohup, so it outlives the ssh session; its own log per train; the pid file holds the
  # Python process that opens the TPU (what `stop` and Autocheckpoint's SIGTERM reach); the exit
  # status lands in electra-jax.exit. Rerunning `train` resumes, and the persistent compilation cache
  # in the workdir skips recompiling the step.
  ssh_all "set -euo pipefail
if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then echo \"electra-jax is still running (pid \$(cat $PID)); launch/tpu.sh stop first\" >&2; exit 1; fi
busy=0
for p in \$(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u); do
  cmd=\$(ps -ww -o args= -p \"\$p\" 2>/dev/null || true)
  case \"\$cmd\" in
    *$VENV/bin/*) echo \"killing pid \$p, an earlier electra-jax run still holding the TPU: \$cmd\"; kill -9 \"\$p\" ;;
    *) echo \"the TPU is held by pid \$p (\$cmd), not an electra-jax run of ours: not killed; stop it first\" >&2; busy=1 ;;
  esac
done
[ \$busy = 0 ] || exit 1
mkdir -p $LOGDIR
n=1; while [ -e $LOGDIR/train-\$n.log ]; do n=\$((n + 1)); done
log=$LOGDIR/train-\$n.log
ln -sfn \"\$log\" $LOG
rm -f $PID $EXIT
export JAX_COMPILATION_CACHE_DIR=$(printf '%q' "$WORKDIR/xla-cache")
cd \$HOME
nohup bash -c 'log=\$1; shift; \"\$@\" > \"\$log\" 2>&1 < /dev/null & echo \$! > $PID; wait \$!; echo \$? > $EXIT' \
runner \"\$log\" $VENV/bin/electra-jax pretrain --config $config --data $(printf '%q' "$DATA") \
--workdir $(printf '%q' "$WORKDIR") ${TRAIN_ARGS:-} > /dev/null 2>&1 < /dev/null &
for _ in \$(seq 100); do [ -s $PID ] && break; sleep 0.1; done
echo \"started pid \$(cat $PID), log \$log\""
}

# One line per worker: "running", "exited CODE [STEP TOTAL]" (the run's last "stopped at step STEP of
# TOTAL"), or "none" (never started).
# shellcheck disable=SC2016
WORKER_STATUS="if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then echo running
elif [ -f $EXIT ]; then echo \"exited \$(cat $EXIT) \$(sed -n 's/^stopped at step \\([0-9]*\\) of \\([0-9]*\\).*/\\1 \\2/p' $LOG | tail -n 1)\"
else echo none; fi"

# Until every worker's run has ended; OUTCOME: done (the last step reached), stopped (exited 0 before
# it: SIGTERM, e.g. maintenance), failed (a worker exited non-zero, or never started), or preempted
# (the node is gone).
watch_run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# every ${POLL_S}s until every worker's run has ended:"
    ssh_all "$WORKER_STATUS" --output-directory=STATUS_DIR
    OUTCOME="done"
    return 0
  fi
  local dir node word code step total running failed finished count
  dir=$(mktemp -d)
  while true; do
    sleep "$POLL_S"
    node=$(node_state)
    case "$node" in
      READY) ;;
      PREEMPTED|TERMINATED|STOPPED|"") OUTCOME=preempted; rm -rf "$dir"; return 0 ;;
      *) continue ;;  # REPAIRING, RESTARTING (maintenance): wait for it
    esac
    rm -f "$dir"/*.log
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$WORKER_STATUS" \
      --output-directory="$dir" > /dev/null 2>&1 || continue
    running=0 failed=0 finished=0 count=0
    while read -r word code step total; do
      count=$((count + 1))
      case "$word" in
        running) running=1 ;;
        exited) [[ "$code" == 0 ]] || failed=1
                [[ -n "${step:-}" && "$step" == "${total:-}" ]] && finished=1 ;;
        *) failed=1 ;;
      esac
    done < <(cat "$dir"/*.log 2>/dev/null)
    (( count == WORKERS )) || continue
    # A run that ended while the slice was taken away (after the state check above) was preempted,
    # not failed: its workers died with their VMs.
    case "$(node_state)" in
      READY) ;;
      PREEMPTED|TERMINATED|STOPPED|"") OUTCOME=preempted; rm -rf "$dir"; return 0 ;;
      *) continue ;;
    esac
    if (( failed )); then OUTCOME=failed
    elif (( running )); then continue
    elif (( finished )); then OUTCOME="done"
    else OUTCOME=stopped
    fi
    rm -rf "$dir"
    return 0
  done
}

status() {
  [[ "$DRY_RUN" == 1 ]] && { wait_ready; ssh_all "$WORKER_STATUS"; return 0; }
  local node
  node=$(node_state)
  echo "queued resource: $(qr_state | grep . || echo none)"
  echo "node: ${node:-none}"
  [[ "$node" == READY ]] || return 0
  local dir f
  dir=$(mktemp -d)
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$WORKER_STATUS" \
    --output-directory="$dir" > /dev/null 2>&1 || true
  for f in "$dir"/*.log; do
    [[ -f "$f" ]] && echo "worker $(basename "$f" .log): $(cat "$f")"
  done
  rm -rf "$dir"
}

# Every worker's logs, every attempt, into LOGS_DIR/<UTC time>/N.log (gcloud's --output-directory
# writes worker N's output to N.log). A deleted or preempted slice has none left to collect.
collect_logs() {
  local dir
  dir="${LOGS_DIR:-$HOME/electra-jax-logs/$TPU_NAME}/$(date -u +%Y%m%dT%H%M%SZ)"
  if [[ "$DRY_RUN" != 1 ]]; then
    [[ "$(node_state)" == READY ]] || { say "$TPU_NAME is not READY: no worker logs to collect"; return 0; }
    mkdir -p "$dir"
  fi
  ssh_all "for f in $LOGDIR/train-*.log; do [ -f \"\$f\" ] && { echo \"==> \$f <==\"; cat \"\$f\"; }; done; true" \
    --output-directory="$dir" && say "logs of every worker in $dir (worker N: N.log)"
}

delete() {
  collect_logs || say "collecting the logs failed; deleting anyway"
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet ${EXTRA[@]+"${EXTRA[@]}"}
}

delete_queued() {  # a TPU made by create-queued: the queued resource and its node
  collect_logs || say "collecting the logs failed; deleting anyway"
  run gcloud compute tpus queued-resources delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --force --quiet \
    ${EXTRA[@]+"${EXTRA[@]}"}
}

# run: the whole job, and the slice deleted at the end whatever happened.
finish() {
  local code=$?
  trap - EXIT
  if [[ "${KEEP_TPU:-0}" == 1 ]]; then
    say "KEEP_TPU=1: $TPU_NAME is kept (and billed): launch/tpu.sh delete-queued when done"
  elif [[ "$DRY_RUN" != 1 && -z "$(qr_state)$(node_state)" ]]; then
    say "nothing of $TPU_NAME to delete"
  else
    EXTRA=()  # create-queued's flags (--spot) are not delete's
    delete_queued || say "deleting $TPU_NAME FAILED: delete it by hand (launch/tpu.sh delete-queued), it is billed"
  fi
  exit "$code"
}

run_job() {
  need CONFIG DATA WORKDIR REPO
  local recreates=0 restarts=0
  if [[ "$DRY_RUN" != 1 && -n "$(qr_state)$(node_state)" ]]; then
    die "a queued resource or TPU named $TPU_NAME exists already: another TPU_NAME, or delete it first"
  fi
  trap finish EXIT
  trap 'exit 130' INT TERM
  create_queued
  setup
  while true; do
    train
    watch_run
    case "$OUTCOME" in
      done) say "training finished"; return 0 ;;
      failed) fail "training failed on a worker; its log: launch/tpu.sh logs, or the collected logs below" ;;
      stopped)  # the slice is still there (a maintenance SIGTERM, a stop): resume on it
        restarts=$((restarts + 1))
        (( restarts <= ${MAX_RECREATES:-10} )) || fail "stopped $restarts times; giving up"
        say "the run stopped before its last step: training again (it resumes)" ;;
      preempted)  # a spot slice cannot be restarted, only requested again
        recreates=$((recreates + 1))
        (( recreates <= ${MAX_RECREATES:-10} )) || fail "preempted $recreates times; giving up"
        say "$TPU_NAME was preempted: deleting it and requesting it again ($recreates of ${MAX_RECREATES:-10})"
        local flags=(${EXTRA[@]+"${EXTRA[@]}"})
        EXTRA=()
        delete_queued
        EXTRA=(${flags[@]+"${flags[@]}"})
        create_queued
        setup ;;
    esac
  done
}

[[ -n "$ACTION" ]] || die "usage: launch/tpu.sh [--dry-run] create|create-queued|wait|status|setup|train|logs|collect-logs|stop|delete|delete-queued|run [gcloud flags]"
need PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
accelerator
say "$TPU_NAME: $ACCELERATOR_TYPE, $WORKERS worker(s), runtime $RUNTIME"

case "$ACTION" in
  create) create ;;
  create-queued) create_queued ;;
  wait) wait_ready ;;
  status) status ;;
  setup) setup ;;
  train) train ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker="${WORKER:-0}" \
      --command="tail -n 50 -F $LOG"
    ;;
  collect-logs) collect_logs ;;
  stop)  # SIGTERM by pid (a pattern would match this very shell): every worker saves the step and exits
    ssh_all "if [ -f $PID ] && kill -0 \"\$(cat $PID)\" 2>/dev/null; then
  pid=\$(cat $PID); kill -TERM \$pid
  for _ in \$(seq 900); do kill -0 \$pid 2>/dev/null || break; sleep 1; done
  if kill -0 \$pid 2>/dev/null; then echo \"pid \$pid still running after 900 s\" >&2; exit 1; fi
  echo \"stopped pid \$pid (saved; rerun train to resume)\"
else echo 'not running'; fi"
    ;;
  delete) delete ;;
  delete-queued) delete_queued ;;
  run) run_job ;;
  *)
    die "unknown action $ACTION: create|create-queued|wait|status|setup|train|logs|collect-logs|stop|delete|delete-queued|run"
    ;;
esac
