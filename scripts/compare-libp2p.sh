#!/bin/sh
# devp2p beside rust-libp2p and this machine's raw limits, in one run.
#
#   scripts/compare-libp2p.sh [ROUNDS]      (default 3)
#
# Builds `devp2p` (release), ../shared/peers/libp2p-bench and
# ../shared/peers/limits (in $PEERS_TARGET, default /tmp/devp2p-peers-target,
# outside the project's target dir), then runs every workload ROUNDS times,
# interleaved (devp2p, libp2p, raw limits, next round), printing each result
# as one JSON line, and finally the medians and the ratios devp2p/libp2p.
set -eu
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
PEERS=${PEERS:-../shared/peers}
PEERS_TARGET=${PEERS_TARGET:-/tmp/devp2p-peers-target}
OUT=${OUT:-$(mktemp /tmp/devp2p-compare.XXXXXX)}

cargo build --release --bin devp2p >&2
(cd "$PEERS/libp2p-bench" && CARGO_TARGET_DIR="$PEERS_TARGET/libp2p" cargo build --release --locked >&2)
(cd "$PEERS/limits" && CARGO_TARGET_DIR="$PEERS_TARGET/limits" cargo build --release --locked >&2)
D=target/release/devp2p
L=$PEERS_TARGET/libp2p/release/libp2p-bench
R=$PEERS_TARGET/limits/release/perf_limits

: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for w in bulk bulk8 msgs rtt conns; do
    $D bench --only "$w" 2>/dev/null | sed 's/^{/{"impl":"devp2p",/' | tee -a "$OUT"
  done
  # The same four workloads on smol, and each runtime's plain-TCP round
  # trip (the floor its scheduling sets for rtt).
  for w in bulk msgs rtt conns; do
    $D bench --only "$w" --runtime smol 2>/dev/null | sed 's/^{/{"impl":"devp2p",/' | tee -a "$OUT"
  done
  for r in tokio smol; do
    $D bench --only tcp-rtt --runtime "$r" 2>/dev/null | sed 's/^{/{"impl":"raw",/' | tee -a "$OUT"
  done
  # The bound for bulk: ring's ChaCha20-Poly1305 sealing on one core while
  # the other opens, no network.
  $D bench --only aead 2>/dev/null | sed 's/^{/{"impl":"raw",/' | tee -a "$OUT"
  # The 64 B workload read one typed message per call: one `Message` per
  # `Messages::next`, one `Event` per `Events::next`.
  for r in messages events; do
    $D bench --only msgs --recv "$r" 2>/dev/null | sed 's/^{/{"impl":"devp2p",/' | tee -a "$OUT"
  done
  for w in bulk msgs rtt handshakes; do
    $L "$w" 2>/dev/null | tee -a "$OUT"
  done
  # Raw limits: naively sealed TCP (16 KiB ChaCha20-Poly1305 frames) and
  # plain TCP ping-pong, tokio with 2 workers.
  $R net 2>/dev/null | awk '
    /^enc tcp bulk/ { print "{\"impl\":\"raw\",\"bench\":\"sealed_tcp\",\"mb_per_sec\":" $9 "}" }
    /^tcp ping-pong/ { print "{\"impl\":\"raw\",\"bench\":\"tcp_pingpong\",\"p50_us\":" $8 ",\"p99_us\":" $11 "}" }
  ' | tee -a "$OUT"
  echo "round $round done" >&2
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(impl, bench, key, **f):
    v = [r[key] for r in rows if r.get("impl") == impl and r.get("bench") == bench
         and all(r.get(k) == x for k, x in f.items())]
    return statistics.median(v) if v else float("nan")
d_bulk, l_bulk = med("devp2p", "bulk", "mb_per_sec", protocols=1, runtime="tokio"), med("rust-libp2p", "bulk", "mb_per_s")
aead = med("raw", "aead_bound", "mb_per_sec")
s_bulk = med("devp2p", "bulk", "mb_per_sec", runtime="smol")
s_msgs = med("devp2p", "msgs", "msgs_per_sec", runtime="smol")
s50, s99 = med("devp2p", "rtt", "p50_us", runtime="smol"), med("devp2p", "rtt", "p99_us", runtime="smol")
s_conn = med("devp2p", "conns", "per_sec", runtime="smol")
t_tcp50, s_tcp50 = med("raw", "tcp_rtt", "p50_us", runtime="tokio"), med("raw", "tcp_rtt", "p50_us", runtime="smol")
d_bulk8 = med("devp2p", "bulk", "mb_per_sec", protocols=8, runtime="tokio")
sealed = med("raw", "sealed_tcp", "mb_per_sec")
d_msgs, l_msgs = med("devp2p", "msgs", "msgs_per_sec", recv="batches", runtime="tokio"), med("rust-libp2p", "msgs", "msgs_per_s")
d_msgs_m = med("devp2p", "msgs", "msgs_per_sec", recv="messages")
d_msgs_e = med("devp2p", "msgs", "msgs_per_sec", recv="events")
d50, d99 = med("devp2p", "rtt", "p50_us", runtime="tokio"), med("devp2p", "rtt", "p99_us", runtime="tokio")
l50, l99 = med("rust-libp2p", "rtt", "p50_us"), med("rust-libp2p", "rtt", "p99_us")
r50, r99 = med("raw", "tcp_pingpong", "p50_us"), med("raw", "tcp_pingpong", "p99_us")
d_conn, l_conn = med("devp2p", "conns", "per_sec", runtime="tokio"), med("rust-libp2p", "handshakes", "conns_per_s")
print(json.dumps({"summary": "medians", "rounds": len([r for r in rows if r.get("bench") == "conns" and r.get("runtime") == "tokio"]),
    "bulk_mb_s": {"devp2p": d_bulk, "libp2p": l_bulk, "sealed_tcp": sealed, "aead_bound": aead,
                  "ratio_to_libp2p": round(d_bulk / l_bulk, 2), "ratio_to_sealed_tcp": round(d_bulk / sealed, 2),
                  "ratio_to_aead_bound": round(d_bulk / aead, 2)},
    "bulk_8_protocols_mb_s": {"devp2p": d_bulk8, "ratio_to_1_protocol": round(d_bulk8 / d_bulk, 3)},
    "msgs_per_s": {"devp2p": d_msgs, "libp2p": l_msgs, "ratio": round(d_msgs / l_msgs, 2)},
    "msgs_one_per_call_per_s": {"messages_next": d_msgs_m, "events_next": d_msgs_e,
                                "ratio_messages_next": round(d_msgs_m / l_msgs, 2),
                                "ratio_events_next": round(d_msgs_e / l_msgs, 2)},
    "rtt_us": {"devp2p": [d50, d99], "libp2p": [l50, l99], "raw_tcp_pingpong": [r50, r99]},
    "conns_per_s": {"devp2p": d_conn, "libp2p": l_conn, "ratio": round(d_conn / l_conn, 2)},
    "rtt_tcp_baseline_p50_us": {"tokio": t_tcp50, "smol": s_tcp50},
    "smol_to_tokio": {"bulk": round(s_bulk / d_bulk, 2), "msgs": round(s_msgs / d_msgs, 2),
                      "rtt_p50": round(s50 / d50, 2), "rtt_p99": round(s99 / d99, 2), "conns": round(s_conn / d_conn, 2)}}))
EOF
