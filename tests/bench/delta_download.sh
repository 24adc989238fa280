#!/usr/bin/env bash
# Benchmark: delta downloads (issue 17). A core package of 2,000 files / 200 MB
# of incompressible data; v2 changes 5 % of the files, v3 all of them. The
# packages are served by nginx as plain static files (its access log counts the
# bytes it sent, headers included); `molt serve` names nginx as the package site.
# A real `molt agent` with v1 installed upgrades (up to the hand-over):
#   - to v2 by delta: bytes on the wire vs 1.15 x (changed entries' compressed
#     size + local headers + metadata: end record, central directory, manifest,
#     the 8 KiB signature slot), and the time beside the agent's full download
#     of the same package (delta_downloads = false) and beside rsync of the same
#     tree change from a loopback rsync daemon (bytes as `rsync --stats` says);
#   - to v3 (100 % changed): the agent must choose the full download after
#     reading the metadata, no more than 5 % slower than a plain full download.
# Median of RUNS for each, taking turns.
#
#   bash tests/bench/delta_download.sh   (MOLT=path/to/molt; RUNS=3; FILES=2000; FILE_KB=100)
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
bench_molt
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is required (apt-get install nginx-light)" >&2; exit 2; }
command -v rsync >/dev/null || { echo "rsync is required" >&2; exit 2; }
RUNS="${RUNS:-3}"; FILES="${FILES:-2000}"; FILE_KB="${FILE_KB:-100}"
V1=quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225
V2=quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130
V3=quebec-12-09-2020__patch3-06-18-2021_07-01-2021_1130
T="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_keys "$T"
# Trees: c1 (v1), c2 (v2: 5 % of the files rewritten), c3 (v3: all rewritten).
python3 - "$T" "$FILES" "$FILE_KB" <<'PY'
import os, sys
t, n, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for c in ("c1", "c2", "c3", "u"):
    os.makedirs(f"{t}/{c}/bin", exist_ok=True)
    with open(f"{t}/{c}/bin/molt", "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(f"{t}/{c}/bin/molt", 0o755)
changed = set(range(0, n, 20))  # every 20th file: 5 %
for i in range(n):
    rel = f"lib/d{i % 40:02}/f{i:05}.bin"
    a = os.urandom(kb * 1024)
    b = os.urandom(kb * 1024) if i in changed else a
    c = os.urandom(kb * 1024)
    for tree, data in (("c1", a), ("c2", b), ("c3", c)):
        os.makedirs(os.path.dirname(f"{t}/{tree}/{rel}"), exist_ok=True)
        with open(f"{t}/{tree}/{rel}", "wb") as f:
            f.write(data)
    # rsync's quick check: unchanged files keep v1's time, changed ones are newer.
    st = os.stat(f"{t}/c1/{rel}")
    d = 1000 if i in changed else 0
    os.utime(f"{t}/c2/{rel}", ns=(st.st_atime_ns + d * 10**9, st.st_mtime_ns + d * 10**9))
PY
mkdir -p "$T/www/packages"
PK="$T/www/packages"
for spec in "c1 core $V1" "c2 core $V2" "c3 core $V3" "u upgrade $V2" "u upgrade $V3"; do
  set -- $spec
  "$MOLT" bundle pack "$T/$1" --buildstamp "molt-$2.$3.universal.universal.zip" --sequence 1 --out "$PK/molt-$2.$3.universal.universal.zip" --key "$T/k.pk8" >/dev/null
done
# A v1 install.
H="$T/home"
bench_install "$H" "$V1" "$T/c1" "$PK/molt-core.$V1.universal.universal.zip" "$T/root.json"
cp -a "$H" "$T/home.template"

# nginx: the packages as static files; its log counts bytes sent per request.
NPORT=$(free_port)
cat > "$T/nginx.conf" <<NGINX
worker_processes 1;
user root;
pid $T/nginx.pid;
error_log $T/nginx-error.log warn;
events { worker_connections 256; }
http {
  log_format bytes '\$uri \$status \$bytes_sent';
  access_log $T/access.log bytes;
  sendfile on;
  server {
    listen 127.0.0.1:$NPORT;
    root $T/www;
  }
}
NGINX
"$NGINX" -c "$T/nginx.conf" -p "$T" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$NPORT/packages/molt-upgrade.$V2.universal.universal.zip" && break; sleep 0.1; done

# rsync daemon: module v2 is the new tree.
RPORT=$(free_port)
printf 'use chroot = no\npid file = %s\n[v2]\npath = %s\nread only = yes\n' "$T/rsyncd.pid" "$T/c2" > "$T/rsyncd.conf"
rsync --daemon --no-detach --config="$T/rsyncd.conf" --port="$RPORT" --address=127.0.0.1 & PIDS+=($!)
sleep 0.5

SRV=
serve() { # serve <fleet version>
  [ -n "$SRV" ] && { kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; }
  rm -f "$T/cp.db"*
  "$MOLT" serve --db "$T/cp.db" --packages "$PK" --listen 127.0.0.1:0 --admin-token bench-admin-token-0123 \
    --fleet-version "$1" --package-base-url "http://127.0.0.1:$NPORT/packages" \
    --bootstrap-agent bench:bench-agent-token-0123 > "$T/serve.out" 2> "$T/serve.err" & SRV=$!
  PIDS+=($SRV)
  for _ in $(seq 100); do grep -q http:// "$T/serve.out" 2>/dev/null && break; sleep 0.1; done
  URL="$(grep -o 'http://[0-9.:]*' "$T/serve.out" | head -1)"
}

# One agent run: prints "<download_ms> <core bytes sent by nginx> <mode>".
agent_run() { # agent_run <delta_downloads true|false> <to version>
  rm -rf "$H"; cp -a "$T/home.template" "$H"
  bench_config "$H" "$URL" "$1"
  : > "$T/access.log"; kill -USR1 "$(cat "$T/nginx.pid")" 2>/dev/null || true
  local line; line="$(bench_agent_once "$H" "$T/agent.err")"
  local ms mode bytes
  ms=$(bench_field "$line" download_ms)
  mode=$(echo "$line" | grep -o 'mode="\?[a-z]*' | tr -d '"' | cut -d= -f2)
  # A delta tried and given up: its metadata reads count too.
  local tried; tried=$(grep "Delta download not used" "$H/logs/agent.log" | grep "molt-core" | grep -o 'delta_ms=[0-9]*' | cut -d= -f2 | head -1)
  ms=$(( ms + ${tried:-0} ))
  bytes=$(awk -v f="/packages/molt-core.$2.universal.universal.zip" '$1==f {s+=$3} END {print s+0}' "$T/access.log")
  echo "$ms $bytes ${mode:-full}"
}

serve "$V2"
curl -s -o /dev/null "http://127.0.0.1:$NPORT/packages/molt-core.$V2.universal.universal.zip"  # warm the page cache
D=(); F=(); R=()
for i in $(seq "$RUNS"); do
  D+=("$(agent_run true "$V2")")
  F+=("$(agent_run false "$V2")")
  rm -rf "$T/dest"; cp -a "$T/c1" "$T/dest"
  s=$(date +%s%N)
  rsync -a --stats "rsync://127.0.0.1:$RPORT/v2/" "$T/dest/" > "$T/rsync.out"
  e=$(date +%s%N)
  R+=("$(( (e - s) / 1000000 )) $(grep 'Total bytes received' "$T/rsync.out" | tr -dc 0-9)")
done
serve "$V3"
curl -s -o /dev/null "http://127.0.0.1:$NPORT/packages/molt-core.$V3.universal.universal.zip"
A=(); P=()
for i in $(seq "$RUNS"); do
  A+=("$(agent_run true "$V3")")
  P+=("$(agent_run false "$V3")")
done

python3 - "$T" "$PK/molt-core.$V1.universal.universal.zip" "$PK/molt-core.$V2.universal.universal.zip" \
  "$(printf '%s;' "${D[@]}")" "$(printf '%s;' "${F[@]}")" "$(printf '%s;' "${R[@]}")" \
  "$(printf '%s;' "${A[@]}")" "$(printf '%s;' "${P[@]}")" <<'PY'
import os, statistics, sys, zipfile, hashlib
t, z1, z2 = sys.argv[1:4]
runs = [[tuple(r.split()) for r in a.split(';') if r] for a in sys.argv[4:9]]
delta, full, rs, all_delta, all_full = runs
def ent(z):
    return {i.filename: i for i in zipfile.ZipFile(z).infolist()}
old, new = ent(z1), ent(z2)
changed = [n for n, i in new.items() if not n.startswith("molt/") and (n not in old or old[n].CRC != i.CRC or old[n].file_size != i.file_size)]
data = sum(new[n].compress_size + 30 + len(n) for n in changed)
meta_names = [n for n in new if n.startswith("molt/")]
size = os.path.getsize(z2)
with open(z2, "rb") as f:
    f.seek(size - 22); eocd = f.read(22)
cd = int.from_bytes(eocd[12:16], "little") + 22
meta = cd + sum(new[n].compress_size + 30 + len(n) for n in meta_names)
budget = 1.15 * (data + meta)
med = lambda rows, k, cast=int: statistics.median(cast(r[k]) for r in rows)
print(f"package: {size/1e6:.1f} MB, {len(new)} entries, {len(changed)} changed ({data/1e6:.2f} MB compressed), metadata {meta/1e3:.1f} KB; {len(delta)} runs each, medians")
modes = {r[2] for r in delta}
print(f"5 % changed, delta : {med(delta,1)/1e6:8.2f} MB on the wire (nginx), {med(delta,0):5.0f} ms, mode {','.join(sorted(modes))}"
      f" | wire / (changed + metadata) = {med(delta,1)/(data+meta):.3f} (target <= 1.15)")
print(f"5 % changed, full  : {med(full,1)/1e6:8.2f} MB on the wire, {med(full,0):5.0f} ms | delta time / full = {med(delta,0)/med(full,0):.2f}x, bytes {med(delta,1)/med(full,1):.3f}x")
print(f"5 % changed, rsync : {med(rs,1)/1e6:8.2f} MB received (rsync --stats), {med(rs,0):5.0f} ms (whole rsync run) | delta bytes / rsync = {med(delta,1)/med(rs,1):.2f}x, time {med(delta,0)/med(rs,0):.2f}x")
amodes = {r[2] for r in all_delta}
print(f"100 % changed      : agent {med(all_delta,0):5.0f} ms (mode {','.join(sorted(amodes))}, {med(all_delta,1)/1e6:.2f} MB) vs plain full {med(all_full,0):5.0f} ms"
      f" | {med(all_delta,0)/med(all_full,0):.3f}x (target <= 1.05x, full chosen)")
ok = med(delta,1) <= budget and modes == {"delta"} and amodes == {"full"}
print("RESULT:", "ok" if ok else "NOT MET")
PY
