#!/usr/bin/env bash
# RaftMQ and RabbitMQ side by side on this machine, with the same load generator (raftmq bench):
# each scenario runs against both brokers alternately for several rounds; the table shows the
# medians and their ratio (RaftMQ / RabbitMQ). Installs rabbitmq-server from Debian's packages
# if missing (without starting its system service), runs private nodes on side ports in a
# temporary directory, and stops every process it started, by pid. While one broker is measured
# the other's processes are frozen (SIGSTOP/SIGCONT), so neither takes CPU from the other.
#
# Scenarios (issue 5):
#   a  1 producer, 1 consumer, 16-byte transient messages, no confirms
#   b  the same with 1 KiB
#   c  durable queue, persistent 1 KiB, 100 confirms in flight
#   d  quorum queue, 1 KiB, 100 confirms in flight
#   e  fanout to 3 queues, 3 consumers, 1 KiB transient
#   f  4 producers, 4 consumers, 4 queues, 1 KiB transient
#   g  a 3-node cluster of each, quorum queue, 1 KiB, 100 confirms in flight, the client on the
#      node that leads the queue: RabbitMQ puts a quorum queue's leader on the declaring
#      client's node (the first URI); for RaftMQ the raft leader's URI goes first. Each run
#      starts 2 s after the other broker is frozen, for both, so that elections a thawed
#      cluster may hold are over before it is measured.
#   h  1 million 1 KiB persistent messages queued: broker memory (RSS), and the time from a
#      restart to serving them again (AMQP port open, the queue's count back)
#   k  g with the queue's leader node SIGKILLed 5 s into the run (fresh clusters each round):
#      the longest pause between two confirms, and nothing lost
#
# With --client go, scenarios a-g are driven by deploy/bench/go-client instead (RabbitMQ's Go
# client, amqp091-go; built here from Debian's golang-go and its amqp091-go package, installed if
# missing): the same loads through another client library, acking every message, no prefetch
# limit. It reports rates and end-to-end latency only (no confirm latency, no lost count), talks
# to the first node of a cluster, and does not run k.
#
# With --client java, deploy/bench/java-client drives a-g the same way on RabbitMQ's Java client
# (the library PerfTest is built on; Debian's librabbitmq-client-java and default-jdk-headless,
# installed if missing). It writes every publish and every ack with a system call of its own.
#
# Usage: deploy/bench/compare.sh [--bin PATH] [--rounds N] [--seconds S] [--scenarios abcdefghk]
#                                [--h-messages N] [--out FILE.jsonl] [--client raftmq|go|java]
set -euo pipefail

BIN=target/release/raftmq
ROUNDS=3
SECS=10
SCENARIOS=abcdefghk
H_MESSAGES=1000000
OUT=""
CLIENT=raftmq
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --h-messages) H_MESSAGES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --client) CLIENT="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
BIN="$(realpath "$BIN")"
[ -x "$BIN" ] || { echo "no raftmq binary at $BIN (cargo build --release)" >&2; exit 2; }
case "$CLIENT" in
  raftmq) ;;
  go|java) case "$SCENARIOS" in *k*)
        [ "$SCENARIOS" = abcdefghk ] && SCENARIOS=abcdefgh \
          || { echo "--client $CLIENT does not run k (it does not fail over)" >&2; exit 2; } ;;
      esac ;;
  *) echo "--client is raftmq, go or java, not $CLIENT" >&2; exit 2 ;;
esac

WORK="$(mktemp -d /var/tmp/raftmq-compare.XXXXXX)"
RESULTS="${OUT:-$WORK/results.jsonl}"
: > "$RESULTS"
declare -A PID=()          # name -> pid (a process group leader: started with setsid)
EPMD_BEFORE="$(pgrep -x epmd || true)"

stop_one() {  # name [signal]
  local name=$1 sig=${2:-KILL} p=${PID[$1]:-}
  [ -n "$p" ] || return 0
  kill -CONT -- "-$p" 2>/dev/null || true   # a frozen process would not act on TERM
  kill -s "$sig" -- "-$p" 2>/dev/null || kill -s "$sig" "$p" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$p" 2>/dev/null || true
  unset "PID[$name]"
}
cleanup() {
  for name in "${!PID[@]}"; do stop_one "$name"; done
  # epmd is started by the first Erlang node as a daemon of its own; stop it if we did.
  if [ -z "$EPMD_BEFORE" ]; then
    for p in $(pgrep -x epmd || true); do kill "$p" 2>/dev/null || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

port_free() {  # port: fail if something already listens there (it would be measured instead)
  if (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is already in use; stop whatever listens there first" >&2
    exit 1
  fi
}
wait_port() {  # port name
  for _ in $(seq 1 600); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not open port $1; its log:" >&2
  tail -30 "$WORK/$2.log" >&2 || true
  exit 1
}

# ---- RabbitMQ ---------------------------------------------------------------------------------

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "installing rabbitmq-server from Debian's packages" >&2
  # Keep the package from starting its system-wide service.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
if [ "$CLIENT" = go ]; then
  if ! command -v go >/dev/null 2>&1 || [ ! -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ]; then
    echo "installing golang-go and amqp091-go from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-github-rabbitmq-amqp091-go-dev >/dev/null
  fi
  # GOPATH mode against Debian's copy of the library: nothing is fetched from the network.
  mkdir -p "$WORK/gopath/src"
  ln -s "$(realpath "$(dirname "$0")")/go-client" "$WORK/gopath/src/go-client"
  GO111MODULE=off GOPATH="$WORK/gopath:/usr/share/gocode" GOCACHE="$WORK/gocache" \
    go build -o "$WORK/go-client" go-client
fi
JAVA_CP=/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar
if [ "$CLIENT" = java ]; then
  if ! command -v javac >/dev/null 2>&1 || [ ! -f /usr/share/java/amqp-client.jar ]; then
    echo "installing default-jdk-headless and librabbitmq-client-java from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      default-jdk-headless librabbitmq-client-java >/dev/null
  fi
  mkdir -p "$WORK/java"
  javac -d "$WORK/java" -cp "$JAVA_CP" "$(dirname "$0")/java-client/JavaClient.java"
fi
RABBIT_BIN=/usr/lib/rabbitmq/bin
RABBIT_HOME="$WORK/rabbit-home"   # the Erlang cookie of our private nodes
mkdir -p "$RABBIT_HOME"

rabbit_env() {  # name amqp_port
  local dir="$WORK/$1"
  echo HOME="$RABBIT_HOME" RABBITMQ_NODENAME="$1@localhost" RABBITMQ_NODE_PORT="$2" \
    RABBITMQ_DIST_PORT="$(( $2 + 1000 ))" RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_PID_FILE="$dir/pid" \
    ERL_CRASH_DUMP="$dir/erl_crash.dump"
}
start_rabbit() {  # name amqp_port
  local name=$1 port=$2 dir="$WORK/$1"
  port_free "$port"
  mkdir -p "$dir"
  echo '[].' > "$dir/enabled_plugins"
  printf 'listeners.tcp.default = %s\nloopback_users = none\n' "$port" > "$dir/rabbitmq.conf"
  env $(rabbit_env "$name" "$port") setsid "$RABBIT_BIN/rabbitmq-server" > "$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  wait_port "$port" "$name"
}
rabbitmqctl() {  # name port args...
  local name=$1 port=$2; shift 2
  env $(rabbit_env "$name" "$port") "$RABBIT_BIN/rabbitmqctl" -n "$name@localhost" "$@"
}

# ---- RaftMQ -----------------------------------------------------------------------------------

spawn_raftmq() {  # name amqp_port [extra serve args...]
  local name=$1 port=$2; shift 2
  port_free "$port"
  setsid "$BIN" serve --amqp-listen "127.0.0.1:$port" --http-listen "127.0.0.1:$(( port + 1000 ))" \
    "$@" > "$WORK/$name.log" 2>&1 &
  PID[$name]=$!
}
start_raftmq() {  # name amqp_port [extra serve args...]
  spawn_raftmq "$@"
  wait_port "$2" "$1"
}

# ---- measuring --------------------------------------------------------------------------------

rss_kib() {  # pid: resident memory of the process group led by pid, KiB
  local total=0 p
  for p in $(pgrep -g "$1" || echo "$1"); do
    total=$(( total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# While one broker is measured, the other one's processes are frozen (SIGSTOP, then SIGCONT):
# with both running, the idle one still took CPU from the measured one on these 2 cores (Erlang's
# schedulers spin when idle, and a RabbitMQ node tidies its queue files after a round), which
# made the same RaftMQ build measure 13-16k msg/s in g beside RabbitMQ and 21-24k alone.
others() {  # broker: process-group leaders of the other broker's running nodes
  local k
  for k in "${!PID[@]}"; do
    case "$1:$k" in rabbitmq:raftmq*|raftmq:rabbit*) echo "${PID[$k]}" ;; esac
  done
}
freeze_others() { local p; for p in $(others "$1"); do kill -STOP -- "-$p" 2>/dev/null || true; done; }
thaw_others() { local p; for p in $(others "$1"); do kill -CONT -- "-$p" 2>/dev/null || true; done; }

bench() {  # scenario broker uris -- bench flags... (uris @leader: RaftMQ's nodes, leader first)
  local scenario=$1 broker=$2 uris=$3; shift 4
  local json
  freeze_others "$broker"
  if [ "$scenario" = g ]; then sleep 2; fi
  if [ "$uris" = @leader ]; then uris=$(raftmq_leader_first); fi
  if [ "$CLIENT" = go ]; then
    # shellcheck disable=SC2086
    json="$("$WORK/go-client" -uri "${uris%%,*}" -seconds "$SECS" ${GO_FLAGS[$scenario]} 2>/dev/null)" \
      || { thaw_others "$broker"; return 1; }
  elif [ "$CLIENT" = java ]; then
    # The Go client's flags, spelled with two dashes (-size 16 -> --size 16).
    # shellcheck disable=SC2086
    json="$(java -cp "$WORK/java:$JAVA_CP" JavaClient --uri "${uris%%,*}" --seconds "$SECS" \
      $(echo " ${GO_FLAGS[$scenario]}" | sed 's/ -/ --/g') 2>"$WORK/java-client.err")" \
      || { thaw_others "$broker"; grep -v '^ *[0-9]*s published' "$WORK/java-client.err" >&2; return 1; }
  else
    json="$("$BIN" bench --uri "$uris" --duration "$SECS" --json --queue-prefix "${PREFIX:-cmp-$scenario-$RANDOM}" "$@")" \
      || { thaw_others "$broker"; return 1; }
  fi
  thaw_others "$broker"
  python3 - "$scenario" "$broker" "$json" >> "$RESULTS" <<'PY'
import json, sys
scenario, broker, report = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(json.dumps({"scenario": scenario, "broker": broker, **report}))
PY
  python3 - "$scenario" "$broker" "$json" >&2 <<'PY'
import json, sys
r = json.loads(sys.argv[3])
print("  %s %-8s published %7.0f/s confirmed %7.0f/s consumed %7.0f/s p99 %8.1f ms lost %d"
      % (sys.argv[1], sys.argv[2], r["publish_rate"], r["confirm_rate"], r["consume_rate"],
         r["latency_ms"]["p99"], r.get("lost", 0)))
PY
}

declare -A FLAGS=(
  [a]="--producers 1 --consumers 1 --size 16"
  [b]="--producers 1 --consumers 1 --size 1024"
  [c]="--producers 1 --consumers 1 --size 1024 --persistent --confirm 100"
  [d]="--producers 1 --consumers 1 --size 1024 --persistent --confirm 100 --queue-type quorum"
  [e]="--producers 1 --consumers 3 --queues 3 --exchange fanout --size 1024"
  [f]="--producers 4 --consumers 4 --queues 4 --size 1024"
  [g]="--producers 1 --consumers 1 --size 1024 --persistent --confirm 100 --queue-type quorum"
)
FLAGS[k]=${FLAGS[g]}   # g's load, with a leader kill
declare -A GO_FLAGS=(
  [a]="-size 16"
  [b]="-size 1024"
  [c]="-size 1024 -persistent -confirm 100"
  [d]="-size 1024 -persistent -confirm 100 -queue-type quorum"
  [e]="-consumers 3 -queues 3 -fanout -size 1024"
  [f]="-producers 4 -consumers 4 -queues 4 -size 1024"
  [g]="-size 1024 -persistent -confirm 100 -queue-type quorum"
)

RMQ_URI="amqp://guest:guest@127.0.0.1:25710/%2f"
RAFT_URI="amqp://guest:guest@127.0.0.1:25720/%2f"

single=""
for s in a b c d e f; do case "$SCENARIOS" in *$s*) single="$single $s" ;; esac; done
if [ -n "$single" ]; then
  echo "== single nodes: RabbitMQ on 25710, RaftMQ on 25720; scenarios$single; $ROUNDS rounds of ${SECS}s" >&2
  start_rabbit rabbit 25710
  start_raftmq raftmq 25720 --data-dir "$WORK/raftmq-data"
  for round in $(seq 1 "$ROUNDS"); do
    for s in $single; do
      # Alternate which broker goes first, so neither always runs on a warmer machine.
      if [ $(( round % 2 )) -eq 1 ]; then order="rabbitmq raftmq"; else order="raftmq rabbitmq"; fi
      for broker in $order; do
        if [ "$broker" = rabbitmq ]; then uri=$RMQ_URI; else uri=$RAFT_URI; fi
        # shellcheck disable=SC2086
        bench "$s" "$broker" "$uri" -- ${FLAGS[$s]}
      done
    done
  done
  stop_one rabbit; stop_one raftmq
fi

# The node leading the queue: RabbitMQ's quorum queue leader, RaftMQ's raft leader.
rabbit_leader() {  # queue -> 1..3
  rabbitmqctl rabbit1 25731 list_queues -q name leader 2>/dev/null \
    | awk -v q="$1" '$1==q {sub(/^rabbit/, "", $2); sub(/@.*/, "", $2); print $2}'
}
raftmq_leader() {
  for i in 1 2 3; do
    if curl -s "127.0.0.1:2674$i/health" | grep -q '"role":"leader"'; then echo "$i"; return; fi
  done
}
raftmq_leader_first() {  # the cluster's AMQP URIs, the raft leader's first
  local l i uris
  l=$(raftmq_leader)
  uris="amqp://guest:guest@127.0.0.1:2574${l:-1}/%2f"
  for i in 1 2 3; do [ "$i" = "${l:-1}" ] || uris="$uris,amqp://guest:guest@127.0.0.1:2574$i/%2f"; done
  echo "$uris"
}
start_clusters() {  # fresh 3-node clusters of both brokers
  for i in 1 2 3; do rm -rf "$WORK/rabbit$i" "$WORK/raftmq-n$i"; start_rabbit "rabbit$i" "2573$i"; done
  for i in 2 3; do
    rabbitmqctl "rabbit$i" "2573$i" stop_app >/dev/null
    rabbitmqctl "rabbit$i" "2573$i" join_cluster rabbit1@localhost >/dev/null
    rabbitmqctl "rabbit$i" "2573$i" start_app >/dev/null
  done
  PEERS=(--peer 1=127.0.0.1:27741@az-a --peer 2=127.0.0.1:27742@az-b --peer 3=127.0.0.1:27743@az-c)
  for i in 1 2 3; do
    zone=$(echo "a b c" | cut -d' ' -f"$i")
    # A member serves only once a majority is up: start all three, then wait.
    spawn_raftmq "raftmq$i" "2574$i" --node-id "$i" --az "az-$zone" --raft-listen "127.0.0.1:2774$i" \
      --data-dir "$WORK/raftmq-n$i" --cluster-secret compare "${PEERS[@]}"
  done
  for i in 1 2 3; do wait_port "2574$i" "raftmq$i"; done
}
stop_clusters() {
  for i in 1 2 3; do stop_one "rabbit$i"; stop_one "raftmq$i"; done
}
RMQ_URIS="amqp://guest:guest@127.0.0.1:25731/%2f,amqp://guest:guest@127.0.0.1:25732/%2f,amqp://guest:guest@127.0.0.1:25733/%2f"

case "$SCENARIOS" in *g*)
  echo "== 3-node clusters on loopback: quorum queue, 1 KiB, 100 confirms; $ROUNDS rounds" >&2
  start_clusters
  for round in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086
    bench g rabbitmq "$RMQ_URIS" -- ${FLAGS[g]}
    # shellcheck disable=SC2086
    bench g raftmq @leader -- ${FLAGS[g]}
  done
  rabbit_rss=0; raft_rss=0
  for i in 1 2 3; do
    rabbit_rss=$(( rabbit_rss + $(rss_kib "${PID[rabbit$i]}") ))
    raft_rss=$(( raft_rss + $(rss_kib "${PID[raftmq$i]}") ))
  done
  echo "{\"scenario\":\"g-rss\",\"broker\":\"rabbitmq\",\"rss_kib\":$rabbit_rss}" >> "$RESULTS"
  echo "{\"scenario\":\"g-rss\",\"broker\":\"raftmq\",\"rss_kib\":$raft_rss}" >> "$RESULTS"
  stop_clusters
  ;;
esac

kill_leader_later() {  # broker queue pid-prefix: SIGKILL the queue's leader node 5 s from now
  local broker=$1 queue=$2 n=""
  sleep 3
  for _ in $(seq 1 20); do
    if [ "$broker" = rabbitmq ]; then n=$(rabbit_leader "$queue"); else n=$(raftmq_leader); fi
    [ -n "$n" ] && break
    sleep 0.1
  done
  sleep 2
  if [ -n "$n" ]; then
    echo "  k $broker: SIGKILL node $n" >&2
    kill -KILL -- "-${PID[${3}$n]}" 2>/dev/null || true
  else
    echo "  k $broker: no leader found for $queue" >&2
  fi
}

case "$SCENARIOS" in *k*)
  echo "== leader SIGKILLed under g's load; $ROUNDS rounds, fresh clusters each" >&2
  for round in $(seq 1 "$ROUNDS"); do
    start_clusters
    for broker in rabbitmq raftmq; do
      # The client starts on the node that will be killed, for both: RabbitMQ puts a quorum
      # queue's leader on the declaring client's node (the first URI); for RaftMQ the raft
      # leader's URI goes first.
      if [ "$broker" = rabbitmq ]; then
        uris=$RMQ_URIS; prefix=rabbit
      else
        prefix=raftmq; uris=$(raftmq_leader_first)
      fi
      q="cmp-k-$RANDOM"
      kill_leader_later "$broker" "$q-0" "$prefix" &
      killer=$!
      # shellcheck disable=SC2086
      PREFIX="$q" bench k "$broker" "$uris" -- ${FLAGS[k]}
      wait "$killer"
    done
    stop_clusters
  done
  ;;
esac

case "$SCENARIOS" in *h*)
  echo "== $H_MESSAGES persistent 1 KiB messages queued: memory and restart" >&2
  fill() {  # broker uri
    "$BIN" bench --uri "$2" --producers 1 --consumers 0 --size 1024 --persistent --confirm 100 \
      --messages "$H_MESSAGES" --duration 3600 --json --queue-prefix fill > "$WORK/fill-$1.json"
  }
  now() { date +%s.%N; }
  since() { python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$1"; }
  start_rabbit rabbit 25710
  fill rabbitmq "$RMQ_URI"
  sleep 5   # let queue paging settle
  rss=$(rss_kib "${PID[rabbit]}")
  stop_one rabbit TERM
  t0=$(now); start_rabbit rabbit 25710; secs=$(since "$t0")
  count=$(rabbitmqctl rabbit 25710 list_queues name messages 2>/dev/null | awk '$1=="fill-0" {print $2}' || true)
  echo "{\"scenario\":\"h\",\"broker\":\"rabbitmq\",\"rss_kib\":$rss,\"restart_s\":$secs,\"messages_after\":${count:-0}}" >> "$RESULTS"
  stop_one rabbit

  start_raftmq raftmq 25720 --data-dir "$WORK/raftmq-h"
  fill raftmq "$RAFT_URI"
  sleep 5
  rss=$(rss_kib "${PID[raftmq]}")
  stop_one raftmq TERM
  t0=$(now); start_raftmq raftmq 25720 --data-dir "$WORK/raftmq-h"; secs=$(since "$t0")
  echo "{\"scenario\":\"h\",\"broker\":\"raftmq\",\"rss_kib\":$rss,\"restart_s\":$secs}" >> "$RESULTS"
  stop_one raftmq
  ;;
esac

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(scenario, broker, key):
    vals = [key(r) for r in rows if r["scenario"] == scenario and r["broker"] == broker]
    return statistics.median(vals) if vals else None
def line(label, a, b, unit, better_lower=False):
    if a is None or b is None:
        return
    ratio = (b / a) if a else float("inf")
    print(f"| {label:<46} | {a:>12,.1f} | {b:>12,.1f} | {ratio:>6.2f}x |")
print("| scenario | RabbitMQ | RaftMQ | RaftMQ/RabbitMQ |")
print("|---|---:|---:|---:|")
names = {
    "a": "a 16 B transient, consumed msg/s",
    "b": "b 1 KiB transient, consumed msg/s",
    "c": "c durable persistent 1 KiB, confirmed msg/s",
    "d": "d quorum 1 KiB, confirmed msg/s",
    "e": "e fanout x3, delivered msg/s",
    "f": "f 4x4x4 queues, consumed msg/s",
    "g": "g 3-node quorum 1 KiB, confirmed msg/s",
}
for s, label in names.items():
    confirmed = s in "cdg"
    rate = (lambda r: r["confirm_rate"]) if confirmed else (lambda r: r["consume_rate"])
    line(label, med(s, "rabbitmq", rate), med(s, "raftmq", rate), "msg/s")
    if s == "e":
        line("e fanout x3, published msg/s", med(s, "rabbitmq", lambda r: r["publish_rate"]), med(s, "raftmq", lambda r: r["publish_rate"]), "msg/s")
    line(f"{s} end-to-end latency p99, ms (lower is better)", med(s, "rabbitmq", lambda r: r["latency_ms"]["p99"]), med(s, "raftmq", lambda r: r["latency_ms"]["p99"]), "ms")
    if confirmed and all("confirm_latency_ms" in r for r in rows if r["scenario"] == s):
        line(f"{s} confirm latency p99, ms (lower is better)", med(s, "rabbitmq", lambda r: r["confirm_latency_ms"]["p99"]), med(s, "raftmq", lambda r: r["confirm_latency_ms"]["p99"]), "ms")
line("k leader SIGKILL: longest pause between confirms, ms (lower is better)", med("k", "rabbitmq", lambda r: r["max_confirm_gap_ms"]), med("k", "raftmq", lambda r: r["max_confirm_gap_ms"]), "ms")
line("k leader SIGKILL: confirmed msg/s over the run", med("k", "rabbitmq", lambda r: r["confirm_rate"]), med("k", "raftmq", lambda r: r["confirm_rate"]), "msg/s")
for broker in ("rabbitmq", "raftmq"):
    ks = [r for r in rows if r["scenario"] == "k" and r["broker"] == broker]
    if ks:
        print(f"k {broker}: nacked {[r['nacked'] for r in ks]}, reconnects {[r['reconnects'] for r in ks]}")
line("g RSS of the 3 nodes, MiB (lower is better)", med("g-rss", "rabbitmq", lambda r: r["rss_kib"] / 1024), med("g-rss", "raftmq", lambda r: r["rss_kib"] / 1024), "MiB")
line("h RSS with the messages queued, MiB (lower is better)", med("h", "rabbitmq", lambda r: r["rss_kib"] / 1024), med("h", "raftmq", lambda r: r["rss_kib"] / 1024), "MiB")
line("h restart until serving, s (lower is better)", med("h", "rabbitmq", lambda r: r["restart_s"]), med("h", "raftmq", lambda r: r["restart_s"]), "s")
lost = sum(r.get("lost", 0) for r in rows)
print(f"\nlost confirmed messages over all runs: {lost}")
PY
