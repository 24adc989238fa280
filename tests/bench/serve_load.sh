#!/usr/bin/env bash
# Load benchmark: assigned-version polls from 10,000 simulated agents against
# one `molt serve` on SQLite, against three `molt serve` replicas on one
# PostgreSQL behind an nginx round-robin upstream, and against nginx serving
# the same JSON as a static file, in one run on this machine (127.0.0.1 only;
# bounded by DURATION each).
#
#   bash tests/bench/serve_load.sh            # builds molt --release if needed
#   MOLT_BIN=target/release/molt DURATION=20s CONNECTIONS=256 bash tests/bench/serve_load.sh
#   REPLICAS=0 bash tests/bench/serve_load.sh # SQLite and nginx only
#
# Prints requests/s and p99 latency of each, the single SQLite replica's share
# of nginx's throughput (target: at least 0.5) and what the PostgreSQL
# replicas add (printed; on 2 cores they share the cores with nginx's proxy
# and wrk, so no target).
set -euo pipefail
cd "$(dirname "$0")/../.."

AGENTS=${AGENTS:-10000}
DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-256}
THREADS=${THREADS:-2}
MOLT_PORT=${MOLT_PORT:-18471}
NGINX_PORT=${NGINX_PORT:-18472}
REPLICAS=${REPLICAS:-3}
LB_PORT=${LB_PORT:-18473}
PG_PORT=${PG_PORT:-18474}
REPLICA_PORT0=${REPLICA_PORT0:-18480}
VERSION="quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225"

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "$REPLICAS" -gt 0 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${MOLT_BIN:-}" ]; then
  cargo build --release -p molt
  MOLT_BIN="${CARGO_TARGET_DIR:-target}/release/molt"
fi

work=$(mktemp -d /tmp/molt-serve-bench.XXXXXX)
chmod 755 "$work"
pids=()
pg_ctl_as() { # pg_ctl args..., as the postgres user when root (initdb refuses root)
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PGBIN/pg_ctl" "$@"; else "$PGBIN/pg_ctl" "$@"; fi
}
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${PGBIN:-}" ] && [ -d "$work/pg/data" ]; then pg_ctl_as -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Packages of one release (contents are opaque to the control plane).
mkdir -p "$work/packages" "$work/www/api/v1/agent"
for kind in core upgrade precheck selector; do
  head -c 2000000 /dev/urandom > "$work/packages/molt-$kind.$VERSION.universal.universal.zip"
done
head -c 3000000 /dev/urandom > "$work/packages/molt-runtime.$VERSION.linux.x86-64.zip"

# 10,000 agents with distinct tokens.
awk -v n="$AGENTS" 'BEGIN { srand(42); for (i = 1; i <= n; i++) printf "agent-%05d:tok-%05d-%08x%08x\n", i, i, int(rand()*4294967295), int(rand()*4294967295) }' > "$work/agents.txt"
cut -d: -f2 "$work/agents.txt" > "$work/tokens.txt"

"$MOLT_BIN" serve --db "$work/cp.db" --packages "$work/packages" --listen "127.0.0.1:$MOLT_PORT" \
  --admin-token "bench-admin-token-0123456789" --bootstrap-agents-file "$work/agents.txt" \
  --fleet-version "$VERSION" --log-level warn > "$work/molt.out" 2> "$work/molt.err" &
pids+=($!)
for _ in $(seq 1 600); do grep -q "control plane listening on" "$work/molt.out" 2>/dev/null && break; sleep 0.1; done
grep -q "control plane listening on" "$work/molt.out" || { echo "molt serve did not start:"; cat "$work/molt.err"; exit 1; }

# PostgreSQL in $work (a throw-away cluster on a loopback port, trust auth:
# no password anywhere) and three replicas on it, sharing the packages, the
# logs directory and the admin token.
replica_ports=()
if [ "$REPLICAS" -gt 0 ]; then
  PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$work/pg/data" "$work/pg/sock" "$work/logs"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$work/pg"
  if [ "$(id -u)" = 0 ]; then initdb_as=(runuser -u postgres --); else initdb_as=(); fi
  "${initdb_as[@]}" "$PGBIN/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-locale --no-sync > "$work/initdb.out" 2>&1 \
    || { echo "initdb failed:"; cat "$work/initdb.out"; exit 1; }
  pg_ctl_as -D "$work/pg/data" -l "$work/pg/sock/server.log" -w -t 60 \
    -o "-p $PG_PORT -k $work/pg/sock -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start > /dev/null
  "${initdb_as[@]}" "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres molt
  echo "bench-admin-token-0123456789" > "$work/admin-token"
  for i in $(seq 0 $((REPLICAS - 1))); do
    port=$((REPLICA_PORT0 + i))
    extra=()
    # The first replica registers the agents and sets the fleet version; the
    # others find both in the database.
    [ "$i" = 0 ] && extra=(--bootstrap-agents-file "$work/agents.txt" --fleet-version "$VERSION")
    "$MOLT_BIN" serve --db "postgres://postgres@127.0.0.1:$PG_PORT/molt" --packages "$work/packages" \
      --listen "127.0.0.1:$port" --admin-token-file "$work/admin-token" --logs-dir "$work/logs" \
      "${extra[@]}" --log-level warn > "$work/replica$i.out" 2> "$work/replica$i.err" &
    pids+=($!)
    for _ in $(seq 1 1200); do grep -q "control plane listening on" "$work/replica$i.out" 2>/dev/null && break; sleep 0.1; done
    grep -q "control plane listening on" "$work/replica$i.out" || { echo "replica $i did not start:"; cat "$work/replica$i.err"; exit 1; }
    replica_ports+=("$port")
  done
fi

QUERY="/api/v1/agent/assigned?os=linux&arch=x86-64&runtime="
TOKEN1=$(head -1 "$work/tokens.txt")
curl -sf -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$MOLT_PORT$QUERY" > "$work/www/api/v1/agent/assigned"
echo "assigned JSON ($(wc -c < "$work/www/api/v1/agent/assigned") bytes): $(head -c 160 "$work/www/api/v1/agent/assigned")..."

cat > "$work/nginx.conf" <<NGINX
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path $work/tmp-body;
  proxy_temp_path $work/tmp-proxy;
  fastcgi_temp_path $work/tmp-fcgi;
  uwsgi_temp_path $work/tmp-uwsgi;
  scgi_temp_path $work/tmp-scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $work/www;
    location /api/v1/agent/assigned { default_type application/json; }
  }
$(if [ ${#replica_ports[@]} -gt 0 ]; then
  echo "  upstream molt_replicas {"
  for p in "${replica_ports[@]}"; do echo "    server 127.0.0.1:$p;"; done
  echo "    keepalive 256;"
  echo "  }"
  echo "  server {"
  echo "    listen 127.0.0.1:$LB_PORT;"
  echo "    location / { proxy_pass http://molt_replicas; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; }"
  echo "  }"
fi)
}
NGINX
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$NGINX_PORT$QUERY" >/dev/null 2>&1 && break; sleep 0.1; done
cmp <(curl -sf "http://127.0.0.1:$NGINX_PORT$QUERY") "$work/www/api/v1/agent/assigned" || { echo "nginx does not serve the JSON"; exit 1; }

# wrk script: every request carries the next agent's token (each thread
# starts at a different offset), as 10,000 agents polling would. The requests
# are formatted once in init(): formatting one per request in Lua made wrk
# itself the bottleneck (about 35-40k req/s for any server on 2 cores), which
# capped nginx and hid the difference between the servers.
cat > "$work/rotate.lua" <<LUA
local counter = 0
local reqs = {}
local i = 0
function setup(thread) counter = counter + 1; thread:set("offset", counter * 4999) end
function init(args)
  for line in io.lines("$work/tokens.txt") do
    reqs[#reqs + 1] = wrk.format("GET", "$QUERY", { ["Authorization"] = "Bearer " .. line })
  end
  i = offset or 0
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  io.write(string.format("non2xx_or_errors %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

# CPU seconds (user + system) of processes so far: a measure that holds on a
# busy machine, where requests/s of both sides sink with the shared cores.
cpu_of() { # pids...
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  awk -v t="$t" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }'
}
run() { # name port
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/rotate.lua" "http://127.0.0.1:$2$QUERY" > "$work/$1.wrk" 2>&1
  local rps p99 errs
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$work/$1.wrk")
  p99=$(awk '$1 == "99%" { print $2 }' "$work/$1.wrk")
  errs=$(awk '/^non2xx_or_errors/ { print $2 }' "$work/$1.wrk")
  printf '%s %s %s\n' "$rps" "$p99" "$errs"
}
# Warm both, then measure.
wrk -t1 -c16 -d2s -s "$work/rotate.lua" "http://127.0.0.1:$MOLT_PORT$QUERY" >/dev/null
wrk -t1 -c16 -d2s -s "$work/rotate.lua" "http://127.0.0.1:$NGINX_PORT$QUERY" >/dev/null
molt_pid=${pids[0]}
nginx_pids=$(pgrep -f "nginx: worker process" -P "$(cat "$work/nginx.pid")" | tr '\n' ' ')
c0=$(cpu_of "$molt_pid")
read -r molt_rps molt_p99 molt_err < <(run molt "$MOLT_PORT")
c1=$(cpu_of "$molt_pid")
# shellcheck disable=SC2086
n0=$(cpu_of $nginx_pids)
read -r nginx_rps nginx_p99 nginx_err < <(run nginx "$NGINX_PORT")
# shellcheck disable=SC2086
n1=$(cpu_of $nginx_pids)
dur_s=$(awk -v d="$DURATION" 'BEGIN { sub(/s$/, "", d); print d }')
molt_us=$(awk -v a="$c0" -v b="$c1" -v r="$molt_rps" -v d="$dur_s" 'BEGIN { printf "%.1f", (b - a) * 1e6 / (r * d) }')
nginx_us=$(awk -v a="$n0" -v b="$n1" -v r="$nginx_rps" -v d="$dur_s" 'BEGIN { printf "%.1f", (b - a) * 1e6 / (r * d) }')
if [ ${#replica_ports[@]} -gt 0 ]; then
  for _ in $(seq 1 50); do curl -sf -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$LB_PORT$QUERY" >/dev/null 2>&1 && break; sleep 0.1; done
  wrk -t1 -c16 -d2s -s "$work/rotate.lua" "http://127.0.0.1:$LB_PORT$QUERY" >/dev/null
  read -r pg_rps pg_p99 pg_err < <(run pg "$LB_PORT")
fi

# Command wake-up across replicas (issue 16): an agent's long poll held on
# replica 1, a command queued through replica 0; the time from the queueing
# request to the poll's answer (NOTIFY through PostgreSQL). Five samples; the
# poll's own timeout is 30 s.
wake_ms=()
if [ ${#replica_ports[@]} -gt 1 ]; then
  agent1=$(head -1 "$work/agents.txt" | cut -d: -f1)
  for i in 1 2 3 4 5; do
    # Drain what is queued (earlier samples' commands were answered already).
    curl -sf -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:${replica_ports[1]}/api/v1/agent/commands?wait=0" > /dev/null || true
    curl -sf -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:${replica_ports[1]}/api/v1/agent/commands?wait=30" > "$work/poll$i.json" &
    poll=$!
    sleep 0.5
    t0=$(date +%s%N)
    id=$(curl -sf -X POST -H "Authorization: Bearer bench-admin-token-0123456789" -H 'Content-Type: application/json' \
      -d '{"kind":"grabLogs"}' "http://127.0.0.1:${replica_ports[0]}/api/v1/admin/agents/$agent1/commands" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
    wait "$poll" || true
    t1=$(date +%s%N)
    grep -q "\"id\":$id" "$work/poll$i.json" || { echo "the poll on replica 1 did not return command $id: $(cat "$work/poll$i.json")"; exit 1; }
    curl -sf -X POST -H "Authorization: Bearer $TOKEN1" -H 'Content-Type: application/json' -d '{"ok":true,"message":"bench"}' \
      "http://127.0.0.1:${replica_ports[1]}/api/v1/agent/commands/$id/done" > /dev/null || true
    wake_ms+=("$(( (t1 - t0) / 1000000 ))")
  done
fi

echo
echo "assigned-version polls, $AGENTS agents, $CONNECTIONS connections, $THREADS wrk threads, $DURATION each, $(nproc) cores"
printf '%-12s %14s %12s %10s\n' server "requests/s" "p99" "errors"
printf '%-12s %14s %12s %10s\n' "molt serve" "$molt_rps" "$molt_p99" "$molt_err"
printf '%-12s %14s %12s %10s\n' "nginx" "$nginx_rps" "$nginx_p99" "$nginx_err"
if [ ${#replica_ports[@]} -gt 0 ]; then
  printf '%-12s %14s %12s %10s\n' "molt x${#replica_ports[@]} pg" "$pg_rps" "$pg_p99" "$pg_err"
fi
ratio=$(awk -v a="$molt_rps" -v b="$nginx_rps" 'BEGIN { printf "%.2f", a / b }')
echo "molt/nginx throughput ratio: $ratio (target >= 0.50)"
echo "server CPU per request: molt serve ${molt_us} µs, nginx ${nginx_us} µs (nginx/molt $(awk -v a="$molt_us" -v b="$nginx_us" 'BEGIN { printf "%.2f", b / a }'); wrk's CPU not counted)"
if [ ${#replica_ports[@]} -gt 0 ]; then
  echo "molt x${#replica_ports[@]} on PostgreSQL behind nginx round-robin / nginx static: $(awk -v a="$pg_rps" -v b="$nginx_rps" 'BEGIN { printf "%.2f", a / b }')," \
    "/ one SQLite replica: $(awk -v a="$pg_rps" -v b="$molt_rps" 'BEGIN { printf "%.2f", a / b }') (printed, no target: on $(nproc) cores the replicas, the proxy and wrk share them)"
  if [ "$pg_err" != "0" ]; then echo "the replicas answered $pg_err requests with errors or non-2xx"; sed -n 1,30p "$work/pg.wrk"; exit 1; fi
fi
if [ ${#wake_ms[@]} -gt 0 ]; then
  echo "command queued through replica 0 -> long poll answered on replica 1 (NOTIFY): ${wake_ms[*]} ms (poll timeout 30 s; includes the queueing request)"
fi
if [ "$molt_err" != "0" ]; then echo "molt answered $molt_err requests with errors or non-2xx"; sed -n 1,30p "$work/molt.wrk"; exit 1; fi
awk -v r="$ratio" 'BEGIN { exit !(r >= 0.5) }' && echo "PASS" || { echo "BELOW TARGET"; exit 1; }
