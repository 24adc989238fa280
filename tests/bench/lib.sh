# Shared steps of the agent download benchmarks (agent_download.sh,
# delta_download.sh): sourced, not run. Each function says what it needs.

# The molt binary under test ($MOLT, default the release build) or exit 2.
bench_molt() {
  MOLT="${MOLT:-${CARGO_TARGET_DIR:-target}/release/molt}"
  [ -x "$MOLT" ] || { echo "build it first: cargo build --release -p molt --features test-hooks (or set MOLT=)" >&2; exit 2; }
}

# A one-key trust root: <dir>/k.pk8 signs every role of <dir>/root.json.
bench_keys() { # bench_keys <dir>
  "$MOLT" keygen --out "$1/k.pk8" >/dev/null
  "$MOLT" root init --out "$1/root.json" --root-key "$1/k.pk8" --checks-key "$1/k.pk8" --packages-key "$1/k.pk8" >/dev/null
}

# A fresh install of <version> at <home> from its core package (built from the
# tree <src>) as molt-deploy lays it out: the version directory, its meta,
# `current`, the trust root in state/.
bench_install() { # bench_install <home> <version> <src tree> <core package> <root.json>
  local h="$1" v="$2" src="$3" pkg="$4" root="$5"
  mkdir -p "$h/versions" "$h/state"
  "$MOLT" bundle extract "$pkg" "$h/versions/$v" --root "$root" >/dev/null
  python3 - "$h" "$v" "$src" <<'PY'
import hashlib, json, os, sys
home, v, src = sys.argv[1:]
files = {}
for d, _, fs in os.walk(src):
    for f in fs:
        p = os.path.join(d, f); rel = os.path.relpath(p, src)
        b = open(p, 'rb').read()
        files[rel] = {"size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "mode": os.stat(p).st_mode & 0o777}
os.makedirs(f"{home}/versions/{v}/meta", exist_ok=True)
json.dump({"kind": "core", "name": f"molt-core.{v}.universal.universal.zip", "version": v, "files": files},
          open(f"{home}/versions/{v}/meta/core.meta.json", "w"))
PY
  ln -s "versions/$v" "$h/current"
  cp "$root" "$h/state/root.json"
}

# The agent's config for a benchmark run (no precheck, no hand-over).
bench_config() { # bench_config <home> <control plane url> <delta_downloads true|false>
  printf 'control_plane_url = "%s"\nagent_name = "bench"\ntoken = "bench-agent-token-0123"\nrun_precheck = false\ntest_skip_handover = true\ndelta_downloads = %s\n' "$2" "$3" > "$1/config.toml"
}

# Run `molt agent` at <home> up to the (skipped) hand-over; print the log line
# of the core package's download, or exit 1 with the log's tail.
bench_agent_once() { # bench_agent_once <home> <stderr file>
  local ag line
  MOLT_LOG=info "$MOLT" agent --home "$1" 2> "$2" & ag=$!
  for _ in $(seq 600); do grep -q "hand-over to deploy skipped\|ERROR" "$1/logs/agent.log" 2>/dev/null && break; sleep 0.1; done
  kill $ag 2>/dev/null || true; wait $ag 2>/dev/null || true
  line="$(grep "Package was successfully downloaded" "$1/logs/agent.log" | grep "molt-core" | head -1)"
  [ -n "$line" ] || { echo "agent did not download the package:" >&2; tail -20 "$1/logs/agent.log" >&2; exit 1; }
  echo "$line"
}

# The value of `key=<digits>` in a log line.
bench_field() { # bench_field <line> <key>
  echo "$1" | grep -o "$2=[0-9]*" | cut -d= -f2
}
