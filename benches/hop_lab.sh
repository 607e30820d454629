#!/usr/bin/env bash
# Where a mesh hop's latency goes: p50/p99 added by two proxies in series, against oha -> app.
#
#   benches/hop_lab.sh            (after `cargo build --release --bin weir --example pingora_minimal`)
#   RATES="2000" ROUNDS=1 WEIR=/tmp/other-build/weir benches/hop_lab.sh    (rates, rounds, another weir)
#
# Chains, each two proxies with one thread on CPU 0 in front of nginx `return 200` (CPU 1), oha on
# CPU 1 at a fixed rate over 50 keep-alive connections, latency corrected for coordinated omission:
#   nginx pair (plain HTTP/1), minimal Pingora pair, `weir edge` pair, and the weir gateway pair
#   (checkout's outbound -> mutual TLS, HTTP/2 -> payments' inbound), as in the harness's (h) but
#   without the edge. Then the same pairs behind one `weir edge` (one thread, CPU 0), the harness's
#   layout: each pair's cost there is its column minus "edge only", the harness's "added".
#   A one-off lab beside benches/loadtest.py: it prints, it records nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
W="${WEIR:-$ROOT/target/release/weir}"  # WEIR=path compares another build
PM="$ROOT/target/release/examples/pingora_minimal"
OHA="$(command -v oha || echo "$HOME/.cargo/bin/oha")"
for b in "$W" "$PM" "$OHA"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
RATES="${RATES:-2000 500}"
ROUNDS="${ROUNDS:-2}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
mkdir logs pki gw e1 e2 front

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { local cpu=$1; shift; taskset -c "$cpu" "$@" >>"logs/all.log" 2>&1 & PIDS+=($!); }
wait_200() {  # wait_200 URL: until it answers 200, at most 20 s
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: payments' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  echo "$1 never answered 200; see $WORK/logs" >&2; trap - EXIT; exit 1
}

APP=$(free_port); N1=$(free_port); N2=$(free_port); P1=$(free_port); P2=$(free_port)
E1=$(free_port); E2=$(free_port); OUT=$(free_port); MESH=$(free_port); FRONT=$(free_port)

# the app and the two nginx proxies
nginx_conf() {  # name listen upstream (empty: the app itself)
  local body="return 200 \"ok\";"
  [ -n "$3" ] && body="proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";"
  local up=""; [ -n "$3" ] && up="upstream up { server 127.0.0.1:$3; keepalive 64; }"
  cat > "$1.conf" <<NG
worker_processes 1; daemon off; pid $WORK/$1.pid; error_log $WORK/logs/$1.err;
events { worker_connections 1024; }
http { access_log off; $up server { listen 127.0.0.1:$2; location / { $body } } }
NG
}
nginx_conf app "$APP" ""; nginx_conf n2 "$N2" "$APP"; nginx_conf n1 "$N1" "$N2"
start 1 nginx -c "$WORK/app.conf" -p "$WORK"
start 0 nginx -c "$WORK/n2.conf" -p "$WORK"
start 0 nginx -c "$WORK/n1.conf" -p "$WORK"

# the minimal Pingora pair
start 0 "$PM" "127.0.0.1:$P2" "127.0.0.1:$APP" 1
start 0 "$PM" "127.0.0.1:$P1" "127.0.0.1:$P2" 1

# the weir edges: Host payments -> the next hop
service_yaml() {  # name port: a Service whose one endpoint is 127.0.0.1:port
  cat <<Y
---
apiVersion: v1
kind: Service
metadata: {name: $1, namespace: lab}
spec: {ports: [{name: http, port: 80, targetPort: $2}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1-1, namespace: lab, labels: {kubernetes.io/service-name: $1}}
addressType: IPv4
ports: [{name: http, port: $2}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
Y
}
edge_conf() {  # dir "path service port"...: an Ingress for Host payments, a path prefix per Service
  local dir=$1 route; shift
  local routes=("$@")
  {
    printf 'apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: weir}\n'
    printf 'spec: {controller: weir.dev/ingress-controller}\n---\n'
    printf 'apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: lab, namespace: lab}\n'
    printf 'spec:\n  ingressClassName: weir\n  rules:\n  - host: payments\n    http:\n      paths:\n'
    for route in "${routes[@]}"; do
      set -- $route
      printf '      - {path: %s, pathType: Prefix, backend: {service: {name: %s, port: {number: 80}}}}\n' "$1" "$2"
    done
    for route in "${routes[@]}"; do set -- $route; service_yaml "$2" "$3"; done
  } > "$dir/lab.yaml"
}
start_edge() {  # dir port
  start 0 "$W" edge --threads 1 --config-dir "$1" --http "127.0.0.1:$2" --https "127.0.0.1:$(free_port)" \
    --admin "127.0.0.1:$(free_port)"
}
edge_conf e2 "/ app $APP"; edge_conf e1 "/ app $E2"
start_edge e2 "$E2"; start_edge e1 "$E1"

# the gateway pair: SVIDs from a CA made here; payments' gateway on 127.0.0.2, checkout's on 127.0.0.3
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1)
openssl req -x509 "${EC[@]}" -subj "/CN=lab CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign -keyout pki/ca.key -out pki/ca.crt 2>/dev/null
for sa in payments checkout; do
  openssl req -x509 "${EC[@]}" -subj "/CN=$sa" -CA pki/ca.crt -CAkey pki/ca.key \
    -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature \
    -addext extendedKeyUsage=serverAuth,clientAuth \
    -addext "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/$sa" \
    -keyout "pki/$sa.key" -out "pki/$sa.crt" 2>/dev/null
done
cat > gw/mesh.yaml <<Y
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: default, annotations: {weir.dev/identity: "spiffe://cluster.local/ns/default/sa/payments"}}
spec: {ports: [{name: http, port: 80, targetPort: $APP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: payments-1, namespace: default, labels: {kubernetes.io/service-name: payments}}
addressType: IPv4
ports: [{name: http, port: $APP}]
endpoints: [{addresses: ["127.0.0.2"], conditions: {ready: true}}]
Y
gw() {  # service-account inbound-ip extra-args...
  local sa=$1 ip=$2; shift 2
  start 0 "$W" mesh --threads 1 --identity-cert "pki/$sa.crt" --identity-key "pki/$sa.key" \
    --trust-bundle pki/ca.crt --inbound "$ip:$MESH" --admin "127.0.0.1:$(free_port)" \
    --workload-address 127.0.0.1 --workload-port "$APP" --namespace default "$@"
}
gw payments 127.0.0.2
gw checkout 127.0.0.3 --config-dir gw --outbound "127.0.0.1:$OUT" --mesh-port "$MESH"

# one edge in front, as in the harness: a path prefix per chain
edge_conf front "/app app $APP" "/nginx nginx $N1" "/pingora pingora $P1" "/gateway gateway $OUT"
start_edge front "$FRONT"

for port in $APP $N1 $P1 $E1 $OUT; do wait_200 "http://127.0.0.1:$port/"; done
for path in app nginx pingora gateway; do wait_200 "http://127.0.0.1:$FRONT/$path"; done

measure() {  # url rate -> "p50/p99" in ms
  taskset -c 1 "$OHA" -z 6s -q "$2" -c 50 --no-tui --latency-correction -H "Host: payments" "$1" 2>/dev/null |
    awk '/50.00%/{a=$3; ua=$4} /99.00%/{b=$3; ub=$4}
         END{ if (ua=="us") a/=1000; if (ub=="us") b/=1000; printf "%.3f/%.3f", a, b }'
}
printf "%-6s %-5s %-12s %-12s %-14s %-14s %-14s\n" rate round direct nginx-pair pingora-pair weir-edge-pair gateway-pair
for rate in $RATES; do
  for round in $(seq "$ROUNDS"); do
    printf "%-6s %-5s" "$rate" "$round"
    for port in $APP $N1 $P1 $E1 $OUT; do printf " %-13s" "$(measure "http://127.0.0.1:$port/" "$rate")"; done
    echo
  done
done
echo "(p50/p99 in ms; a chain's cost is its column minus direct)"
echo
echo "behind one weir edge on CPU 0 (the harness's layout):"
printf "%-6s %-5s %-12s %-12s %-14s %-14s\n" rate round edge-only +nginx-pair +pingora-pair +gateway-pair
for rate in $RATES; do
  for round in $(seq "$ROUNDS"); do
    printf "%-6s %-5s" "$rate" "$round"
    for path in app nginx pingora gateway; do printf " %-13s" "$(measure "http://127.0.0.1:$FRONT/$path" "$rate")"; done
    echo
  done
done
echo "(p50/p99 in ms; a pair's cost in the harness's layout is its column minus edge-only)"
