#!/usr/bin/env bash
# secretproxy vs nginx: the same proxy job side by side on loopback.
#
#   bench/run.sh              throughput + latency (wrk), interleaved rounds, Markdown tables
#   bench/run.sh --quick      short smoke run of the same (every target once, a few seconds each)
#   bench/run.sh --allocs     also count heap allocations per request (valgrind dhat; slow-ish)
#   bench/run.sh --allocs-only  only that count, no wrk runs
#   bench/run.sh --perf       also profile each proxy (perf, flat self time) during one more run
#   bench/run.sh --upload     peak RSS of each proxy while a 1 GiB body streams through it
#   bench/run.sh --store      added latency of the shared store ([state], a local redis-server):
#                             no rate limit vs an in-process one vs a shared one, p50/p99
#   bench/run.sh --runtimes   several workers on every core: secretproxy's per-core workers (the
#                             default) vs tokio's work-stealing runtime (SECRETPROXY_RUNTIME=shared)
#                             vs nginx with as many worker processes; HTTP and TLS upstream
#   bench/run.sh --no-logged  skip the targets with access logging on
#   bench/run.sh --no-tls     skip the targets with a TLS upstream
#   bench/run.sh --nginx-only skip secretproxy (tests the harness without a build)
#
# The job: GET /api/<rest> -> http(s)://127.0.0.1:<upstream>/<rest> with
# "Authorization: Bearer <token>" injected. The upstream answers 401 if the header is missing or
# wrong, so every 2xx counted proves the injection happened. The upstream nginx listens twice:
# plain HTTP and TLS (a private CA made with openssl at run time, trusted by secretproxy through
# the route's `ca-file` and by nginx through `proxy_ssl_trusted_certificate`). Each proxy runs
# from its own config directory; logs and wrk output go elsewhere, so no config watcher sees a
# log write. See bench/README.md for the method.
#
# Environment (defaults in brackets; --quick lowers the time-based ones):
#   SECRETPROXY_BIN      secretproxy binary [build with `cargo build --profile dist` in the repo]
#   BENCH_DURATION       seconds per wrk run [10]          BENCH_ROUNDS       interleaved rounds [3]
#   BENCH_WARMUP         warmup seconds per target [3]     BENCH_CONNECTIONS  wrk connections [32]
#   BENCH_THREADS        wrk threads [1]                   BENCH_LAT_DURATION seconds of the 1-connection run [5]
#   BENCH_LOGGED         1 = also run both proxies with access logging on [1]
#   BENCH_TLS            1 = also run both proxies against the TLS upstream [1]
#   BENCH_UPSTREAM_H2    1 = the TLS upstream also offers h2 by ALPN (secretproxy then speaks h2 to
#                        it; nginx's proxy_pass speaks HTTP/1.1 only) [0]
#   BENCH_TLS_PROTOCOLS  TLS versions the upstream offers and nginx's proxy_ssl may use
#                        ["TLSv1.2 TLSv1.3"; nginx 1.22's default leaves TLS 1.3 out]
#   BENCH_NGINX_LOG_BUFFER  e.g. 32k: nginx's access_log gets buffer=<size> flush=500ms, like
#                        secretproxy's buffered writer [empty: one write per line, nginx's default]
#   BENCH_PROXY_CPUS     cpu list for the proxies [0]      BENCH_LOAD_CPUS    cpu list for wrk/curl [1]
#   BENCH_UPSTREAM_CPUS  cpu list for the upstream [same as BENCH_LOAD_CPUS]
#   BENCH_LAT_CPUS       cpu list for everything during the 1-connection run [BENCH_LOAD_CPUS];
#                        empty = keep the throughput pinning
#   BENCH_PORT_BASE      first port; uses base..base+6 and base+707..base+711 [18080]
#   BENCH_ALLOC_REQUESTS requests counted per --allocs target [2000; quick 500]
#   BENCH_ALLOC_WARMUP   requests before those, in both runs [200; quick 100]
#   BENCH_PERF_FREQ      --perf sampling rate, Hz [2999]  BENCH_PERF_SYMBOLS symbols listed per target [12]
#   BENCH_UPLOAD_SIZE    bytes for --upload [1073741824]   BENCH_UPLOAD_ROUNDS [1]
#   BENCH_QUIET_PCT      other processes may use this % of one core during a run [15]; before each
#                        run wait up to BENCH_QUIET_WAIT s [120] for that, redo a disturbed run
#                        up to BENCH_RETRIES times [2; quick 0]
#   BENCH_WORKERS        --runtimes: workers per proxy [the number of CPUs]; that mode pins nothing
#                        (every process may use every CPU) unless the BENCH_*_CPUS say otherwise,
#                        and its wrk defaults to as many threads and 64 connections
#   BENCH_MUST_HTTP      "min-req/s-ratio max-cpu-ratio" for the verdict, HTTP upstream [0.8 1.3]
#   BENCH_MUST_TLS       the same for the TLS upstream [1.0 1.0]
#   BENCH_SP_ROUTE_EXTRA extra TOML lines for the secretproxy route [--upload: max-body = 2 x size]
#   BENCH_OUT            also write the report (Markdown) to this file
#   BENCH_KEEP           1 = keep the temp dir with configs, logs and raw wrk output
set -euo pipefail

MODE=throughput
NGINX_ONLY=0
QUICK=0
ALLOCS=0
PERF=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --upload) MODE=upload ;;
    --store) MODE=store ;;
    --runtimes) MODE=runtimes ;;
    --allocs) ALLOCS=1 ;;
    --perf) PERF=1 ;;
    --allocs-only) ALLOCS=1 MODE=allocs_only ;;
    --nginx-only) NGINX_ONLY=1 ;;
    --no-logged) BENCH_LOGGED=0 ;;
    --no-tls) BENCH_TLS=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $QUICK == 1 ]]; then
  : "${BENCH_DURATION:=2}" "${BENCH_ROUNDS:=1}" "${BENCH_WARMUP:=1}" "${BENCH_LAT_DURATION:=1}"
  : "${BENCH_RETRIES:=0}" "${BENCH_ALLOC_REQUESTS:=500}" "${BENCH_ALLOC_WARMUP:=100}"
  : "${BENCH_UPLOAD_SIZE:=268435456}"
fi
if [[ $MODE == runtimes ]]; then
  WORKERS=${BENCH_WORKERS:-$(getconf _NPROCESSORS_ONLN)}
  : "${BENCH_PROXY_CPUS:=0-$(($(getconf _NPROCESSORS_ONLN) - 1))}" "${BENCH_LOAD_CPUS:=$BENCH_PROXY_CPUS}"
  : "${BENCH_THREADS:=$WORKERS}" "${BENCH_CONNECTIONS:=64}"
fi
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
LAT_DURATION=${BENCH_LAT_DURATION:-5}
LOGGED=${BENCH_LOGGED:-1}
TLS=${BENCH_TLS:-1}
UPSTREAM_H2=${BENCH_UPSTREAM_H2:-0}
TLS_PROTOCOLS=${BENCH_TLS_PROTOCOLS:-TLSv1.2 TLSv1.3}
NGINX_LOG_BUFFER=${BENCH_NGINX_LOG_BUFFER:-}
PROXY_CPUS=${BENCH_PROXY_CPUS:-0}
LOAD_CPUS=${BENCH_LOAD_CPUS:-1}
UPSTREAM_CPUS=${BENCH_UPSTREAM_CPUS:-$LOAD_CPUS}
LAT_CPUS=${BENCH_LAT_CPUS-$LOAD_CPUS}
PORT_BASE=${BENCH_PORT_BASE:-18080}
ALLOC_REQUESTS=${BENCH_ALLOC_REQUESTS:-2000}
ALLOC_WARMUP=${BENCH_ALLOC_WARMUP:-200}
PERF_FREQ=${BENCH_PERF_FREQ:-2999}
PERF_SYMBOLS=${BENCH_PERF_SYMBOLS:-12}
UPLOAD_SIZE=${BENCH_UPLOAD_SIZE:-1073741824}
UPLOAD_ROUNDS=${BENCH_UPLOAD_ROUNDS:-1}
QUIET_PCT=${BENCH_QUIET_PCT:-15}
QUIET_WAIT=${BENCH_QUIET_WAIT:-120}
RETRIES=${BENCH_RETRIES:-2}
read -r MUST_HTTP_RPS MUST_HTTP_CPU <<<"${BENCH_MUST_HTTP:-0.8 1.3}"
read -r MUST_TLS_RPS MUST_TLS_CPU <<<"${BENCH_MUST_TLS:-1.0 1.0}"
[[ $MODE == upload ]] && TLS=0   # the upload job uses the plain-HTTP sink only
[[ $MODE == store ]] && TLS=0    # the store job compares limits on the plain-HTTP upstream

# every listener, by target name
declare -A PORT=(
  [upstream]=$PORT_BASE                    # 18080  upstream nginx, plain HTTP (or the upload sink)
  [nginx]=$((PORT_BASE + 1))               # 18081
  [nginx-log]=$((PORT_BASE + 2))           # 18082
  [upstream-tls]=$((PORT_BASE + 3))        # 18083  upstream nginx, TLS
  [nginx-tls]=$((PORT_BASE + 4))           # 18084
  [nginx-tls-log]=$((PORT_BASE + 5))       # 18085
  [alloc-nginx]=$((PORT_BASE + 6))         # 18086  --allocs: one nginx under valgrind at a time
  [secretproxy]=$((PORT_BASE + 707))       # 18787
  [secretproxy-log]=$((PORT_BASE + 708))   # 18788
  [secretproxy-tls]=$((PORT_BASE + 709))   # 18789
  [secretproxy-tls-log]=$((PORT_BASE + 710)) # 18790
  [alloc-secretproxy]=$((PORT_BASE + 711)) # 18791  --allocs: one secretproxy under valgrind at a time
  [secretproxy-limit]=$((PORT_BASE + 712)) # 18792  --store: in-process rate limit
  [secretproxy-store]=$((PORT_BASE + 713)) # 18793  --store: the same limit in redis
  [redis]=$((PORT_BASE + 714))             # 18794  --store: redis-server, no persistence
  [secretproxy-shared]=$((PORT_BASE + 715))     # 18795  --runtimes: the work-stealing runtime
  [secretproxy-tls-shared]=$((PORT_BASE + 716)) # 18796
)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
CLK_TCK=$(getconf CLK_TCK)
TOKEN="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# --- tools -----------------------------------------------------------------------------------
find_tool() { # name fallback-path
  command -v "$1" 2>/dev/null || { [[ -x $2 ]] && echo "$2"; } || true
}
apt_busy() { grep -qxE 'apt|apt-get|dpkg|unattended-upgr' /proc/[0-9]*/comm 2>/dev/null; }
missing_packages() { # -> Debian packages for the tools this run needs and does not have
  local -a need=(nginx:nginx:/usr/sbin/nginx wrk:wrk:/usr/bin/wrk curl:curl:/usr/bin/curl)
  ((TLS == 1)) && need+=(openssl:openssl:/usr/bin/openssl)
  ((ALLOCS == 1)) && need+=(valgrind:valgrind:/usr/bin/valgrind)
  ((PERF == 1)) && need+=(perf:linux-perf:/usr/bin/perf)
  [[ $MODE == upload ]] && need+=(python3:python3:/usr/bin/python3)
  [[ $MODE == store ]] && need+=(redis-server:redis-server:/usr/bin/redis-server)
  local n tool pkg path
  for n in "${need[@]}"; do
    IFS=: read -r tool pkg path <<<"$n"
    [[ -n $(find_tool "$tool" "$path") ]] || echo "$pkg"
  done
  # secretproxy loads the OS trust store at start (and does not start without one); a minimal
  # Debian has none until ca-certificates is installed
  [[ $NGINX_ONLY == 1 || ! -f /etc/debian_version || -s /etc/ssl/certs/ca-certificates.crt ]] || echo ca-certificates
}
ensure_tools() {
  local -a pkgs
  mapfile -t pkgs < <(missing_packages)
  if ((${#pkgs[@]})); then
    # another apt run may be installing them right now: wait for it first
    local i
    for i in $(seq 1 60); do
      apt_busy || break
      ((i == 1)) && log "apt/dpkg is running; waiting for it (up to 5 min)"
      sleep 5
    done
    mapfile -t pkgs < <(missing_packages)
  fi
  if ((${#pkgs[@]})); then
    [[ $(id -u) == 0 ]] || die "missing tools: sudo apt-get install -y ${pkgs[*]}"
    log "installing ${pkgs[*]} with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >&2
    mapfile -t pkgs < <(missing_packages)
    ((${#pkgs[@]} == 0)) || die "still missing after apt-get: ${pkgs[*]}"
  fi
  NGINX=$(find_tool nginx /usr/sbin/nginx)
  WRK=$(find_tool wrk /usr/bin/wrk)
  VALGRIND=$(find_tool valgrind /usr/bin/valgrind)
  for t in taskset awk getconf; do command -v "$t" >/dev/null || die "$t is needed"; done
}

SP_GIVEN=1
ensure_secretproxy() {
  [[ $NGINX_ONLY == 1 ]] && return
  if [[ -z ${SECRETPROXY_BIN:-} ]]; then
    SP_GIVEN=0
    log "building secretproxy (cargo build --profile dist)"
    (cd "$REPO" && cargo build --profile dist --quiet --bin secretproxy) >&2
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    [[ $target == /* ]] || target=$REPO/$target
    SECRETPROXY_BIN=$target/dist/secretproxy
  fi
  [[ -x $SECRETPROXY_BIN ]] || die "no secretproxy binary at $SECRETPROXY_BIN"
}

# --- work directories ------------------------------------------------------------------------
# $WORK/conf/NAME/  one directory per proxy holding only its config: secretproxy watches its
#                   config's directory for reloads, and a log written there would wake it on
#                   every line (issue 9). Nothing else is ever written into these.
# $WORK/logs/       stderr and access logs of every process
# $WORK/run/NAME/   nginx prefix: pid file and temp dirs
# $WORK/tls/        the private CA and the upstream's certificate
# $WORK/out/        wrk output, result tables, scratch files
WORK=""
setup_work() {
  WORK=$(mktemp -d /tmp/secretproxy-bench.XXXXXX)
  chmod 755 "$WORK"
  CONF=$WORK/conf LOGS=$WORK/logs RUN=$WORK/run TLS_DIR=$WORK/tls OUT=$WORK/out
  mkdir -p "$CONF" "$LOGS" "$RUN" "$TLS_DIR" "$OUT"
}

# --- processes -------------------------------------------------------------------------------
PIDS=()
forget_pid() { # drop a reaped pid so cleanup never signals a reused one
  local -a keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n $WORK ]]; then
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

exited() { # pid -> true when gone or a zombie (our own children stay zombies until waited)
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  [[ ${s:0:1} == Z ]]
}

wait_listening() { # pid port name [tenths of a second to wait]
  local i
  for i in $(seq 1 "${4:-100}"); do
    exited "$1" && { tail -n 20 "$LOGS/$3.log" >&2 || true; die "$3 exited at startup"; }
    port_in_use "$2" && return 0
    sleep 0.1
  done
  die "$3 does not listen on 127.0.0.1:$2"
}

stop() { # name: SIGTERM, wait up to 60 s for the exit, then SIGKILL
  local pid=${MAIN_PID[$1]} i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 600); do exited "$pid" && break; sleep 0.1; done
  exited "$pid" || { log "$1 ignored SIGTERM for 60 s; killing it"; kill -KILL "$pid" 2>/dev/null || true; }
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

children() { # pid -> its child processes (nginx workers), from /proc (no procps needed)
  local f s parent=$1
  local -a fields
  for f in /proc/[0-9]*/stat; do
    read -r s 2>/dev/null <"$f" || continue   # the process may be gone by now
    s=${s##*) }                              # drop "pid (comm) "; index 1 is now the ppid
    read -r -a fields <<<"$s"
    [[ ${fields[1]} == "$parent" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

# pids NAME -> the process ids whose CPU and memory count for that target (nginx: master + workers)
declare -A MAIN_PID KIND
pids() {
  local p=${MAIN_PID[$1]}
  echo "$p"
  [[ ${KIND[$1]} == nginx ]] && children "$p"
  return 0
}

busy_pct() { # -> % of one core used by everything on the machine over $1 seconds
  local a b
  a=$(machine_ticks | awk '{print $1}')
  sleep "$1"
  b=$(machine_ticks | awk '{print $1}')
  echo $(( (b - a) * 100 / CLK_TCK / ${1%.*} ))
}

wait_quiet() { # wait up to BENCH_QUIET_WAIT s until the machine is idle (between runs, ours use ~0)
  local waited=0 busy
  while :; do
    busy=$(busy_pct 1)
    ((busy <= QUIET_PCT)) && return 0
    if ((waited >= QUIET_WAIT)); then log "machine still busy ($busy % of a core); going on"; return 0; fi
    ((waited == 0)) && log "machine busy ($busy % of a core); waiting up to ${QUIET_WAIT}s"
    waited=$((waited + 1))
  done
}

repin() { # proxy-cpus upstream-cpus target... : move running processes (all threads)
  local pcpus=$1 ucpus=$2 t pid
  shift 2
  for pid in $(pids upstream); do taskset -a -p -c "$ucpus" "$pid" >/dev/null; done
  for t in "$@"; do
    for pid in $(pids "$t"); do taskset -a -p -c "$pcpus" "$pid" >/dev/null; done
  done
}

cpu_ticks() { # pid... -> utime+stime summed, in clock ticks
  local total=0 pid s f
  for pid in "$@"; do
    s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    s=${s##*) }                      # drop "pid (comm) "; field 3 (state) is now index 0
    read -r -a f <<<"$s"
    total=$((total + f[11] + f[12])) # fields 14 utime, 15 stime
  done
  echo "$total"
}

mem_kib() { # field pid... -> VmRSS/VmHWM summed, KiB
  local field=$1 total=0 pid v
  shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

target_mem() { # field target -> VmRSS/VmHWM of the target's processes, KiB
  local -a ps
  mapfile -t ps < <(pids "$2")
  mem_kib "$1" "${ps[@]}"
}

# --- TLS -------------------------------------------------------------------------------------
# A private CA and a server certificate it signs (ECDSA P-256, SAN localhost + 127.0.0.1). Not one
# self-signed certificate: `openssl req -x509` marks it CA:TRUE, and rustls (webpki) refuses a CA
# certificate as a server's own. Both proxies trust only ca.pem for this upstream.
make_tls() {
  local d=$TLS_DIR
  {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=secretproxy bench CA" -keyout "$d/ca.key" -out "$d/ca.pem"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr"
    printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature" \
      "extendedKeyUsage = serverAuth" "subjectAltName = DNS:localhost, IP:127.0.0.1" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/server.ext" -out "$d/server.pem"
  } >"$LOGS/openssl.log" 2>&1 || { cat "$LOGS/openssl.log" >&2; die "openssl could not make the test certificates"; }
}

# --- starting the processes ------------------------------------------------------------------
WRAP=()   # command prefix for the next start (--allocs: valgrind)

start_nginx() { # name conf-body cpus [master_process on|off]
  local name=$1 port=${PORT[$1]} dir=$CONF/$1 prefix=$RUN/$1
  mkdir -p "$dir" "$prefix"
  {
    [[ $(id -u) == 0 && ${4:-on} == on ]] && echo "user root;"   # workers must reach the temp dir
    cat <<EOF
worker_processes ${NGINX_WORKERS:-1};
daemon off;
master_process ${4:-on};
pid $prefix/nginx.pid;
error_log $LOGS/$name.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $prefix/body;
    proxy_temp_path       $prefix/proxy;
    fastcgi_temp_path     $prefix/fastcgi;
    uwsgi_temp_path       $prefix/uwsgi;
    scgi_temp_path        $prefix/scgi;
    keepalive_requests 1000000;
    keepalive_timeout  75s;
$2
}
EOF
  } >"$dir/nginx.conf"
  port_in_use "$port" && die "port $port is already in use"
  taskset -c "$3" "${WRAP[@]}" "$NGINX" -e "$LOGS/$name.log" -p "$prefix" -c "$dir/nginx.conf" \
    >>"$LOGS/$name.log" 2>&1 &
  MAIN_PID[$name]=$!
  KIND[$name]=nginx
  PIDS+=("$!")
  wait_listening "$!" "$port" "$name" "$( ((${#WRAP[@]})) && echo 1200 || echo 100)"
}

upstream_location() {
  cat <<EOF
        default_type application/json;
        location / {
            if (\$http_authorization != "Bearer $TOKEN") {
                return 401 '{"error":"missing or wrong Authorization"}';
            }
            return 200 '{"id":42,"name":"bench","items":[1,2,3],"ok":true}';
        }
EOF
}

start_upstream_nginx() {
  local tls_server=""
  if ((TLS == 1)); then
    tls_server="
    server {
        listen 127.0.0.1:${PORT[upstream-tls]} ssl backlog=4096$( ((UPSTREAM_H2 == 1)) && echo ' http2' || true);
        ssl_certificate     $TLS_DIR/server.pem;
        ssl_certificate_key $TLS_DIR/server.key;
        ssl_protocols       $TLS_PROTOCOLS;
        ssl_session_cache   shared:bench:1m;
        ssl_session_timeout 1h;
$(upstream_location)
    }"
  fi
  start_nginx upstream "
    access_log off;
    server {
        listen 127.0.0.1:${PORT[upstream]} backlog=4096;
$(upstream_location)
    }$tls_server" "$UPSTREAM_CPUS"
}

start_upstream_sink() {
  local port=${PORT[upstream]}
  port_in_use "$port" && die "port $port is already in use"
  taskset -c "$UPSTREAM_CPUS" python3 "$BENCH_DIR/upload-sink.py" "$port" "$TOKEN" \
    >"$LOGS/upstream.log" 2>&1 &
  MAIN_PID[upstream]=$!
  KIND[upstream]=other
  PIDS+=("$!")
  wait_listening "$!" "$port" upstream
}

start_nginx_proxy() { # name access-log(off|on) upstream(http|tls) [master_process on|off]
  local access="access_log off;" up=${PORT[upstream]} scheme=http tls=""
  if [[ $2 == on ]]; then
    access="access_log $LOGS/$1-access.log combined$([[ -n $NGINX_LOG_BUFFER ]] && echo " buffer=$NGINX_LOG_BUFFER flush=500ms" || true);"
  fi
  if [[ $3 == tls ]]; then
    up=${PORT[upstream-tls]} scheme=https
    # verify like secretproxy does: only the private CA, the name in the certificate (nginx
    # matches a DNS name, not an IP SAN), sessions resumed; no SNI, as rustls sends none for an IP
    tls="proxy_ssl_trusted_certificate $TLS_DIR/ca.pem;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name localhost;
            proxy_ssl_server_name off;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols $TLS_PROTOCOLS;"
  fi
  start_nginx "$1" "
    $access
    upstream backend {
        server 127.0.0.1:$up;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[$1]} backlog=4096;
        client_max_body_size 0;            # no limit: --upload sends 1 GiB
        location /api/ {
            proxy_pass $scheme://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer $TOKEN\";
            proxy_request_buffering off;   # stream uploads like secretproxy does
            $tls
        }
    }" "$PROXY_CPUS" "${4:-on}"
}

start_secretproxy() { # name rust_log(or "" = unset: the binary's default filter) upstream(http|tls)
  local name=$1 port=${PORT[$1]} dir=$CONF/$1 upstream ca=""
  if [[ $3 == tls ]]; then
    upstream="https://127.0.0.1:${PORT[upstream-tls]}/{rest}"
    ca="ca-file = \"$TLS_DIR/ca.pem\""
  else
    upstream="http://127.0.0.1:${PORT[upstream]}/{rest}"
  fi
  mkdir -p "$dir"
  cat >"$dir/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[secrets.bench]
env = "BENCH_TOKEN"

[routes.api]
path = "/api/{*rest}"
methods = ["GET", "POST"]
upstream = "$upstream"
headers = { Authorization = "Bearer \${bench}" }
$ca
${BENCH_SP_ROUTE_EXTRA:-}
EOF
  port_in_use "$port" && die "port $port is already in use"
  local -a env=(-u RUST_LOG BENCH_TOKEN="$TOKEN" SECRETPROXY_WORKER_THREADS="${SP_WORKERS:-1}")
  [[ -n ${SP_RUNTIME:-} ]] && env+=(SECRETPROXY_RUNTIME="$SP_RUNTIME")
  [[ -n $2 ]] && env+=(RUST_LOG="$2")
  env "${env[@]}" taskset -c "$PROXY_CPUS" "${WRAP[@]}" "$SECRETPROXY_BIN" serve --config "$dir/proxy.toml" \
    >"$LOGS/$name.log" 2>&1 &
  MAIN_PID[$name]=$!
  KIND[$name]=secretproxy
  PIDS+=("$!")
  wait_listening "$!" "$port" "$name" "$( ((${#WRAP[@]})) && echo 1200 || echo 100)"
}

check_targets() { # target... : set each URL to the bench route and check it answers
  local t
  for t in "$@"; do
    URL[$t]="http://127.0.0.1:${PORT[$t]}/api/bench/item"
    check_route "$t" "${URL[$t]}"
  done
}

check_route() { # name url -> the proxy answers 200 with the upstream's body
  local code
  code=$(curl -s -o "$OUT/check.out" -w '%{http_code}' "$2") || true
  [[ $code == 200 ]] && grep -q '"name":"bench"' "$OUT/check.out" \
    || { cat "$OUT/check.out" >&2 || true; die "$1: GET $2 answered $code, want 200 with the upstream's body"; }
}

# --- wrk -------------------------------------------------------------------------------------
# wrk prints e.g. "99%    1.23ms"; to microseconds
to_us() { awk -v v="$1" 'BEGIN {
  n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
  if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1e6;
  else if (u == "m") m = 6e7; else m = 0 / 0
  printf "%.1f", n * m }'; }

# run_wrk target url conns seconds outfile [cpus]
#   -> "requests rps p50us p99us errors cpu_ticks wall_s other_ticks machine_ticks steal_ticks"
run_wrk() {
  local name=$1 url=$2 conns=$3 secs=$4 out=$5 cpus=${6:-$LOAD_CPUS} t0 t1 w0 w1 p
  local -a ps=() hdr=()
  # the direct baselines are the upstream itself: send the header a proxy would have injected
  if [[ $name == direct* ]]; then hdr=(-H "Authorization: Bearer $TOKEN"); else mapfile -t ps < <(pids "$name"); fi
  local -a up=()
  mapfile -t up < <(pids upstream)
  local u0 u1 c0 c1 s0 s1 st0 st1
  t0=$(cpu_ticks "${ps[@]}")
  u0=$(cpu_ticks "${up[@]}")
  children_ticks >"$OUT/c0.$BASHPID"; c0=$(<"$OUT/c0.$BASHPID")
  read -r s0 st0 < <(machine_ticks)
  w0=$(date +%s.%N)
  taskset -c "$cpus" "$WRK" -t"$THREADS" -c"$conns" -d"${secs}s" --latency "${hdr[@]}" "$url" >"$out" 2>&1 \
    || { cat "$out" >&2; die "wrk failed against $name"; }
  w1=$(date +%s.%N)
  read -r s1 st1 < <(machine_ticks)
  children_ticks >"$OUT/c1.$BASHPID"; c1=$(<"$OUT/c1.$BASHPID")
  u1=$(cpu_ticks "${up[@]}")
  t1=$(cpu_ticks "${ps[@]}")
  local req rps p50 p99 bad
  req=$(awk '/ requests in /{print $1}' "$out")
  rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
  p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
  p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
  # non-2xx (e.g. 401 = no injection) and socket errors both count as errors
  bad=$(awk '/Non-2xx or 3xx responses:/{n += $NF}
             /Socket errors:/{gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
  p=$(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}')
  # CPU that neither the proxy, the upstream nor wrk used: other processes on the machine
  local other=$(( (s1 - s0) - (t1 - t0) - (u1 - u0) - (c1 - c0) ))
  ((other < 0)) && other=0
  echo "$req $rps $p50 $p99 $bad $((t1 - t0)) $p $other $((s1 - s0)) $((st1 - st0))"
}

machine_ticks() { # -> busy ticks (all CPUs, without idle, iowait and steal), steal ticks
  awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

children_ticks() { # CPU of this shell's finished children (here: wrk), in clock ticks
  # `times` must run in this shell, not in a pipe or $(...) subshell that has no children yet
  times >"$OUT/times.$BASHPID"
  awk -v hz="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    printf "%d", t * hz + 0.5 }' "$OUT/times.$BASHPID"
}

# --- reporting -------------------------------------------------------------------------------
median() { sort -g | awk '{a[NR] = $1} END {
  if (NR == 0) {print "nan"; exit}
  if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$3"; }  # target column file
fmt_us() { awk -v v="$1" 'BEGIN { if (v == "nan" || v == "") print "–";
  else if (v >= 1000) printf "%.2f ms", v / 1000; else printf "%.0f µs", v }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
fmt_int() { [[ $1 == nan || -z $1 ]] && { echo "–"; return; }; printf '%.0f' "$1" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "–"; else printf "%.2f×", a / b }'; }

machine_info() {
  local cpu kernel sp_ver head
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  kernel=$(uname -sr)
  echo "- Machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $kernel"
  echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); wrk: $("$WRK" -v 2>&1 | head -n1 | awk '{print $2}')$( ((TLS == 1)) && echo "; $(openssl version | awk '{print $1, $2}'); TLS upstream offers $TLS_PROTOCOLS")"
  if [[ $NGINX_ONLY == 0 ]]; then
    sp_ver=$("$SECRETPROXY_BIN" --version 2>/dev/null | head -n1) || sp_ver="(no --version)"
    head="(not a git checkout)"
    if command -v git >/dev/null && head=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
      git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || head+=" + local changes"
    fi
    if [[ $SP_GIVEN == 1 ]]; then
      echo "- secretproxy: $sp_ver ($SECRETPROXY_BIN, given by SECRETPROXY_BIN; this script's repo is at $head)"
    else
      echo "- secretproxy: $sp_ver ($SECRETPROXY_BIN), built from repo HEAD $head, $(rustc --version 2>/dev/null || echo 'rustc ?')"
    fi
  fi
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# --- throughput mode ------------------------------------------------------------------------
# Targets: direct[-tls] (wrk straight at the upstream), then per upstream kind and log mode one
# nginx and one secretproxy. PAIR names the nginx a secretproxy target is compared with, BASE the
# direct run its added latency is measured against.
declare -A URL LABEL PAIR BASE
declare -A IDLE_RSS RSS_AFTER HWM_AFTER
TARGETS=()

suffix() { # upstream(http|tls) log(off|on) -> the target name's suffix: "", -tls, -log, -tls-log
  local s=""
  [[ $1 == tls ]] && s+=-tls
  [[ $2 == on ]] && s+=-log
  echo "$s"
}

label_of() { # target name -> the label in the tables
  case $1 in
    direct) echo "direct to upstream (no proxy)" ;;
    direct-tls) echo "direct to TLS upstream (no proxy)" ;;
    nginx*-log) echo "nginx, access_log on$([[ -n $NGINX_LOG_BUFFER ]] && echo " (buffer=$NGINX_LOG_BUFFER)" || true)" ;;
    nginx*) echo "nginx, access_log off" ;;
    secretproxy*-log) echo "secretproxy, access log on" ;;
    secretproxy*) echo "secretproxy, RUST_LOG=warn" ;;
  esac
}

add_target() { # name
  TARGETS+=("$1")
  LABEL[$1]=$(label_of "$1")
  BASE[$1]=direct$([[ $1 == *-tls* ]] && echo -tls || true)
  URL[$1]="http://127.0.0.1:${PORT[$1]}/api/bench/item"
}

throughput() {
  ((TLS == 1)) && make_tls
  start_upstream_nginx
  URL[direct]="http://127.0.0.1:${PORT[upstream]}/bench/item"
  LABEL[direct]=$(label_of direct)
  URL[direct-tls]="https://127.0.0.1:${PORT[upstream-tls]}/bench/item"
  LABEL[direct-tls]=$(label_of direct-tls)

  local -a ups=(http) modes=(off) all=(direct)
  ((TLS == 1)) && { ups+=(tls); all+=(direct-tls); }
  ((LOGGED == 1)) && modes+=(on)
  local up mode sfx
  for mode in "${modes[@]}"; do
    for up in "${ups[@]}"; do
      sfx=$(suffix "$up" "$mode")
      start_nginx_proxy "nginx$sfx" "$mode" "$up"
      add_target "nginx$sfx"
      if [[ $NGINX_ONLY == 0 ]]; then
        start_secretproxy "secretproxy$sfx" "$([[ $mode == off ]] && echo warn)" "$up"
        add_target "secretproxy$sfx"
        PAIR[secretproxy$sfx]=nginx$sfx
      fi
    done
  done
  all+=("${TARGETS[@]}")

  # the upstream refuses requests without the token; each proxy must get 200
  local code t
  code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[direct]}")
  [[ $code == 401 ]] || die "upstream without Authorization answered $code, want 401"
  if ((TLS == 1)); then
    code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$TLS_DIR/ca.pem" "https://localhost:${PORT[upstream-tls]}/bench/item")
    [[ $code == 401 ]] || die "TLS upstream without Authorization answered $code, want 401 (certificate problem?)"
  fi
  for t in "${TARGETS[@]}"; do check_route "$t" "${URL[$t]}"; done

  for t in "${TARGETS[@]}"; do IDLE_RSS[$t]=$(target_mem VmRSS "$t"); done

  log "targets: ${all[*]}"
  log "warmup: ${WARMUP}s per target"
  for t in "${all[@]}"; do run_wrk "$t" "${URL[$t]}" "$CONNS" "$WARMUP" "$OUT/warmup-$t.txt" >/dev/null; done

  local res=$OUT/results.tsv lat=$OUT/latency.tsv r line i
  local -a order
  : >"$res"; : >"$lat"
  for r in $(seq 1 "$ROUNDS"); do
    # interleaved; every other round in reverse order so no target always goes first
    if ((r % 2)); then order=("${all[@]}"); else order=(); for ((i = ${#all[@]} - 1; i >= 0; i--)); do order+=("${all[$i]}"); done; fi
    for t in "${order[@]}"; do
      log "round $r/$ROUNDS: $t, ${DURATION}s, $CONNS connections"
      local try
      for try in $(seq 0 "$RETRIES"); do
        wait_quiet
        line=$(run_wrk "$t" "${URL[$t]}" "$CONNS" "$DURATION" "$OUT/wrk-$t-$r.txt")
        # redo a run that other processes disturbed (CPU > BENCH_QUIET_PCT % of a core)
        awk -v hz="$CLK_TCK" -v max="$QUIET_PCT" '{exit !(100 * $8 / hz / $7 > max)}' <<<"$line" || break
        ((try < RETRIES)) && log "  run disturbed by other processes ($(awk -v hz="$CLK_TCK" '{printf "%.0f", 100 * $8 / hz / $7}' <<<"$line") % of a core); again"
      done
      echo "$t $r $line" >>"$res"
      log "  -> $(awk '{printf "%s req/s, p50 %s us, p99 %s us, errors %s, proxy cpu %s ticks, other %s, steal %s", $4, $5, $6, $7, $8, $10, $12}' <<<"$t $r $line")"
    done
    # one request at a time has no parallelism to gain from a second core, but each cross-core
    # wakeup costs (on VMs up to ~70 µs): move everything onto one CPU for this part
    [[ -n $LAT_CPUS ]] && repin "$LAT_CPUS" "$LAT_CPUS" "${TARGETS[@]}"
    for t in "${order[@]}"; do
      log "round $r/$ROUNDS: $t, ${LAT_DURATION}s, 1 connection"
      wait_quiet
      line=$(run_wrk "$t" "${URL[$t]}" 1 "$LAT_DURATION" "$OUT/lat-$t-$r.txt" "${LAT_CPUS:-$LOAD_CPUS}")
      echo "$t $r $line" >>"$lat"
    done
    [[ -n $LAT_CPUS ]] && repin "$PROXY_CPUS" "$UPSTREAM_CPUS" "${TARGETS[@]}"
  done
  for t in "${TARGETS[@]}"; do
    RSS_AFTER[$t]=$(target_mem VmRSS "$t")
    HWM_AFTER[$t]=$(target_mem VmHWM "$t")
  done

  # results.tsv columns: 1 target 2 round 3 requests 4 rps 5 p50us 6 p99us 7 errors 8 ticks 9 wall
  #                      10 ticks of other processes 11 machine ticks 12 steal ticks
  local errors
  errors=$(awk '{n += $7} END {print n + 0}' "$res" "$lat")
  # runs other processes disturbed (after the retries) leave the medians when the target has
  # undisturbed ones; results.tsv keeps them all
  local all_res=$res dropped
  res=$OUT/results-clean.tsv
  awk -v hz="$CLK_TCK" -v max="$QUIET_PCT" '
    {line[NR] = $0; t[NR] = $1; bad[NR] = 100 * $10 / hz / $9 > max; if (!bad[NR]) clean[$1]++}
    END {for (i = 1; i <= NR; i++) if (!bad[i] || !clean[t[i]]) print line[i]}' "$all_res" >"$res"
  dropped=$(( $(wc -l <"$all_res") - $(wc -l <"$res") ))

  # the token must not show in any of secretproxy's logs (stderr, access lines)
  local leaks=""
  [[ $NGINX_ONLY == 0 ]] && leaks=$(grep -l -F -- "$TOKEN" "$LOGS"/secretproxy*.log 2>/dev/null || true)

  local alloc_res=""
  ((PERF == 1)) && profile
  if ((ALLOCS == 1)); then alloc_res=$OUT/allocs.tsv; allocs "$alloc_res"; fi

  # per target: median rps, CPU µs per request
  declare -A RPS CPU
  for t in "${all[@]}"; do
    RPS[$t]=$(col "$t" 4 "$res" | median)
    CPU[$t]=$(awk -v t="$t" -v hz="$CLK_TCK" '$1 == t {print $8 * 1e6 / hz / $3}' "$res" | median)
  done

  report() {
    echo "### secretproxy vs nginx: prefix route with Authorization injected"
    echo
    echo "wrk -t$THREADS -c$CONNS, ${DURATION}s per run, $ROUNDS interleaved round(s), median shown;"
    echo "each proxy pinned to CPU $PROXY_CPUS with one worker (nginx worker_processes 1;"
    echo "secretproxy SECRETPROXY_WORKER_THREADS=1), wrk on CPU $LOAD_CPUS, upstream nginx on CPU $UPSTREAM_CPUS."
    if ((TLS == 1)); then
      echo "TLS rows: the upstream speaks TLS$( ((UPSTREAM_H2 == 1)) && echo ' (h2 offered by ALPN)' || echo ' (HTTP/1.1 only)'), ECDSA P-256 certificate from a private CA,"
      echo "verified by both proxies, connections kept alive; the client side is plain HTTP."
    fi
    echo
    if [[ $NGINX_ONLY == 0 ]]; then
      echo "| | req/s HTTP upstream | CPU µs/req |$( ((TLS == 1)) && echo " req/s TLS upstream | CPU µs/req |")"
      echo "|---|---:|---:|$( ((TLS == 1)) && echo "---:|---:|")"
      local mode kind n s row
      for mode in "${modes[@]}"; do
        for kind in nginx secretproxy; do
          row="| ${LABEL[$kind$(suffix http "$mode")]} |"
          for up in "${ups[@]}"; do
            s=$kind$(suffix "$up" "$mode")
            n=nginx$(suffix "$up" "$mode")
            if [[ $kind == nginx ]]; then
              row+=" $(fmt_int "${RPS[$s]}") | $(awk -v v="${CPU[$s]}" 'BEGIN {printf "%.1f", v}') |"
            else
              row+=" $(fmt_int "${RPS[$s]}") ($(ratio "${RPS[$s]}" "${RPS[$n]}")) | $(awk -v v="${CPU[$s]}" 'BEGIN {printf "%.1f", v}') ($(ratio "${CPU[$s]}" "${CPU[$n]}")) |"
            fi
          done
          echo "$row"
        done
      done
      echo
    fi
    echo "| target | upstream | req/s | × nginx | req/s range | p50 | p99 | proxy CPU per request | × nginx | proxy CPU busy | RSS idle | RSS after load | peak RSS |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local lo hi p50 p99 cpu busy xr xc upk
    for t in "${all[@]}"; do
      lo=$(col "$t" 4 "$res" | sort -g | head -n1)
      hi=$(col "$t" 4 "$res" | sort -g | tail -n1)
      p50=$(col "$t" 5 "$res" | median)
      p99=$(col "$t" 6 "$res" | median)
      upk=$([[ $t == *tls* ]] && echo TLS || echo HTTP)
      if [[ $t == direct* ]]; then
        printf '| %s | %s | %s | – | %s–%s | %s | %s | – | – | – | – | – | – |\n' "${LABEL[$t]}" "$upk" \
          "$(fmt_int "${RPS[$t]}")" "$(fmt_int "$lo")" "$(fmt_int "$hi")" "$(fmt_us "$p50")" "$(fmt_us "$p99")"
        continue
      fi
      cpu=$(awk -v v="${CPU[$t]}" 'BEGIN {printf "%.1f µs", v}')
      busy=$(awk -v t="$t" -v hz="$CLK_TCK" '$1 == t {print 100 * $8 / hz / $9}' "$res" | median)
      busy=$(awk -v v="$busy" 'BEGIN {printf "%.0f %%", v}')
      xr="–" xc="–"
      if [[ -n ${PAIR[$t]:-} ]]; then
        xr=$(ratio "${RPS[$t]}" "${RPS[${PAIR[$t]}]}")
        xc=$(ratio "${CPU[$t]}" "${CPU[${PAIR[$t]}]}")
      fi
      printf '| %s | %s | %s | %s | %s–%s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$upk" \
        "$(fmt_int "${RPS[$t]}")" "$xr" "$(fmt_int "$lo")" "$(fmt_int "$hi")" "$(fmt_us "$p50")" "$(fmt_us "$p99")" \
        "$cpu" "$xc" "$busy" "$(fmt_mib "${IDLE_RSS[$t]}")" "$(fmt_mib "${RSS_AFTER[$t]}")" "$(fmt_mib "${HWM_AFTER[$t]}")"
    done
    echo
    echo "Unloaded latency (wrk -c1, ${LAT_DURATION}s per run, median of rounds$([[ -n $LAT_CPUS ]] && echo ", all processes on CPU $LAT_CPUS");"
    echo "added = the proxy's percentile minus the direct run's to the same upstream):"
    echo
    echo "| target | upstream | p50 | p99 | added p50 | added p99 |"
    echo "|---|---|---:|---:|---:|---:|"
    local d50 d99
    for t in "${all[@]}"; do
      p50=$(col "$t" 5 "$lat" | median)
      p99=$(col "$t" 6 "$lat" | median)
      upk=$([[ $t == *tls* ]] && echo TLS || echo HTTP)
      if [[ $t == direct* ]]; then
        printf '| %s | %s | %s | %s | – | – |\n' "${LABEL[$t]}" "$upk" "$(fmt_us "$p50")" "$(fmt_us "$p99")"
      else
        d50=$(col "${BASE[$t]}" 5 "$lat" | median)
        d99=$(col "${BASE[$t]}" 6 "$lat" | median)
        printf '| %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$upk" "$(fmt_us "$p50")" "$(fmt_us "$p99")" \
          "$(fmt_us "$(awk -v a="$p50" -v b="$d50" 'BEGIN {print a - b}')")" \
          "$(fmt_us "$(awk -v a="$p99" -v b="$d99" 'BEGIN {print a - b}')")"
      fi
    done
    echo
    echo "CPU per request = utime+stime of the proxy (nginx: master + worker) over the run / requests"
    echo "completed. CPU busy = that CPU time / wall time (100 % = the proxy's core was the limit)."
    echo "RSS: VmRSS / VmHWM from /proc (nginx: master + worker summed)."
    ((PERF == 1)) && profile_report
    [[ -n $alloc_res ]] && allocs_report "$alloc_res"
    if [[ $errors != 0 ]]; then echo; echo "**Warning: $errors non-2xx responses or socket errors during the runs.**"; fi
    if [[ -n $leaks ]]; then echo; echo "**Warning: the injected token appears in: $(basename -a $leaks | tr '\n' ' ')**"; fi
    # columns 10 and 12: ticks used by other processes, steal ticks (per wall second)
    local bg bg_avg bg_max st_avg st_max
    bg=$(awk -v hz="$CLK_TCK" '{o = 100 * $10 / hz / $9; s = 100 * $12 / hz / $9
      if (o > mo) mo = o; if (s > ms) ms = s; to += o; ts += s}
      END {printf "%.0f %.0f %.0f %.0f", to / NR, mo, ts / NR, ms}' "$all_res")
    read -r bg_avg bg_max st_avg st_max <<<"$bg"
    echo
    echo "Background load during the throughput runs (CPU not used by the proxy, upstream or wrk):"
    echo "mean $bg_avg %, max $bg_max % of one core; hypervisor steal mean $st_avg %, max $st_max %."
    if ((dropped > 0)); then
      echo "$dropped disturbed run(s) (other processes above $QUIET_PCT % of a core after $RETRIES retries) left out of the medians."
    fi
    if awk -v hz="$CLK_TCK" -v max="$QUIET_PCT" '100 * $10 / hz / $9 > max {found = 1} END {exit !found}' "$res"; then
      echo "**Warning: some medians include disturbed runs; rerun on an idle machine before trusting them.**"
    fi
    if [[ $NGINX_ONLY == 0 ]]; then
      echo
      echo "Targets (issue 9, one worker each): HTTP upstream ≥ ${MUST_HTTP_RPS}× nginx's req/s and ≤ ${MUST_HTTP_CPU}× its CPU"
      echo "per request; TLS upstream ≥ ${MUST_TLS_RPS}× and ≤ ${MUST_TLS_CPU}×; logged rows against nginx with access_log on."
      echo
      for t in "${TARGETS[@]}"; do
        [[ -n ${PAIR[$t]:-} ]] || continue
        local rmin cmax
        if [[ $t == *tls* ]]; then rmin=$MUST_TLS_RPS cmax=$MUST_TLS_CPU; else rmin=$MUST_HTTP_RPS cmax=$MUST_HTTP_CPU; fi
        awk -v name="${LABEL[$t]}, $([[ $t == *tls* ]] && echo TLS || echo HTTP) upstream" \
          -v a="${RPS[$t]}" -v b="${RPS[${PAIR[$t]}]}" -v c="${CPU[$t]}" -v d="${CPU[${PAIR[$t]}]}" \
          -v rmin="$rmin" -v cmax="$cmax" 'BEGIN {
          r = a / b; c = c / d
          printf "- %s: req/s %.3f× (%s), CPU per request %.3f× (%s)\n", name,
            r, (r + 1e-9 >= rmin ? "met" : "missed"), c, (c <= cmax + 1e-9 ? "met" : "missed") }'
      done
    fi
    echo
    machine_info
  }
  emit report
}

# --- CPU profile (--perf) -------------------------------------------------------------------
# One more wrk run per proxy target with `perf record` attached to the proxy's processes (no call
# graphs: release builds have no frame pointers). The report keeps the split by binary (kernel,
# the proxy, libc, libssl...) and the hottest symbols by self time; the full `perf report` output
# stays in out/ (BENCH_KEEP=1), next to perf-*.data for `perf report -i`.
profile() {
  local t perf_pid pids_csv
  local -a ps
  for t in "${TARGETS[@]}"; do
    mapfile -t ps < <(pids "$t")
    pids_csv=$(IFS=,; echo "${ps[*]}")
    log "perf: $t, ${DURATION}s at $PERF_FREQ Hz"
    wait_quiet
    taskset -c "$LOAD_CPUS" perf record -q -F "$PERF_FREQ" -p "$pids_csv" -o "$OUT/perf-$t.data" \
      -- sleep "$DURATION" >"$LOGS/perf-$t.log" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    run_wrk "$t" "${URL[$t]}" "$CONNS" "$DURATION" "$OUT/perf-wrk-$t.txt" >/dev/null
    wait "$perf_pid" || { cat "$LOGS/perf-$t.log" >&2; die "perf record failed for $t"; }
    forget_pid "$perf_pid"
    perf report -i "$OUT/perf-$t.data" --stdio --no-children --sort dso -q 2>/dev/null \
      | awk 'NF >= 2 && $1 ~ /%$/' >"$OUT/perf-$t-dso.txt"
    perf report -i "$OUT/perf-$t.data" --stdio --no-children --sort dso,sym -q 2>/dev/null \
      | awk 'NF >= 4 && $1 ~ /%$/' >"$OUT/perf-$t-sym.txt"
  done
}

profile_report() {
  echo
  echo "CPU profiles (perf record -F $PERF_FREQ on the proxy's processes during one more ${DURATION}s wrk -c$CONNS run;"
  echo "self time as a share of all the proxy's samples, no call graphs; the hottest user-space symbols;"
  echo "full reports in out/perf-*.txt with BENCH_KEEP=1):"
  local t
  for t in "${TARGETS[@]}"; do
    echo
    echo "**${LABEL[$t]}, $([[ $t == *tls* ]] && echo TLS || echo HTTP) upstream** — by binary: $(
      awk '{sub(/^\[/, "", $2); sub(/\]$/, "", $2); printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1} NR == 6 {exit}' "$OUT/perf-$t-dso.txt")"
    echo
    echo "| self | binary | symbol |"
    echo "|---:|---|---|"
    # lines: "12.34%  dso  [.] symbol words..."; user space only (the kernel's TCP path is the
    # same for both proxies); symbols shortened (Rust hashes, long generics)
    awk -v n="$PERF_SYMBOLS" '$2 ~ /kernel/ {next} ++shown > n {exit} {
      sym = ""; for (i = 4; i <= NF; i++) sym = sym (i > 4 ? " " : "") $i
      sub(/::h[0-9a-f]+$/, "", sym)
      if (length(sym) > 110) sym = substr(sym, 1, 107) "..."
      printf "| %s | %s | `%s` |\n", $1, $2, sym }' "$OUT/perf-$t-sym.txt"
  done
}

# --- allocations (--allocs) ------------------------------------------------------------------
# Each proxy runs alone under `valgrind --tool=dhat` (nginx without its master process), serves
# ALLOC_WARMUP requests on one keep-alive connection and exits; then again with ALLOC_WARMUP +
# ALLOC_REQUESTS. dhat's totals of the second run minus the first, over ALLOC_REQUESTS, is the
# heap allocations (malloc/calloc/realloc/memalign calls) and bytes per request: start-up,
# first-connection and shutdown costs are in both runs and cancel.
allocs() { # result-file
  local res=$1 t kind mode up a b
  [[ -n $VALGRIND ]] || die "--allocs needs valgrind"
  : >"$res"
  local -a kinds=(nginx)
  [[ $NGINX_ONLY == 0 ]] && kinds+=(secretproxy)
  local -a ups=(http) modes=(off)
  ((TLS == 1)) && ups+=(tls)
  ((LOGGED == 1)) && modes+=(on)
  for mode in "${modes[@]}"; do
    for up in "${ups[@]}"; do
      for kind in "${kinds[@]}"; do
        t=$kind$(suffix "$up" "$mode")
        log "allocations: $t ($ALLOC_WARMUP, then $((ALLOC_WARMUP + ALLOC_REQUESTS)) requests under valgrind)"
        alloc_run "$kind" "$mode" "$up" "$ALLOC_WARMUP" "$t-a"
        a=$ALLOC_TOTALS
        alloc_run "$kind" "$mode" "$up" $((ALLOC_WARMUP + ALLOC_REQUESTS)) "$t-b"
        echo "$t $a $ALLOC_TOTALS" >>"$res"
      done
    done
  done
}

ALLOC_TOTALS=""
alloc_run() { # kind mode(off|on) upstream(http|tls) requests tag; sets ALLOC_TOTALS="blocks bytes"
  local kind=$1 name=alloc-$1 n=$4 tag=$5 vlog=$OUT/valgrind-$5.log pid
  WRAP=("$VALGRIND" --tool=dhat --log-file="$vlog" --dhat-out-file="$OUT/dhat-$tag.json")
  if [[ $kind == nginx ]]; then
    start_nginx_proxy "$name" "$2" "$3" off
  else
    start_secretproxy "$name" "$([[ $2 == off ]] && echo warn)" "$3"
  fi
  WRAP=()
  # one curl, one keep-alive connection, n identical requests
  local url="http://127.0.0.1:${PORT[$name]}/api/bench/item" cfg=$OUT/curl-$tag.cfg i
  for ((i = 0; i < n; i++)); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$cfg"
  local ok
  ok=$(taskset -c "$LOAD_CPUS" curl -s -K "$cfg" -w '%{http_code}\n' | grep -c '^200$' || true)
  stop "$name"
  ((ok == n)) || die "$name ($tag): $ok of $n requests answered 200"
  ALLOC_TOTALS=$(awk '/ Total: /{gsub(/,/, ""); print $6, $3}' "$vlog")
  [[ -n $ALLOC_TOTALS ]] || { tail -n 20 "$vlog" >&2; die "no dhat totals in $vlog"; }
}

allocs_report() { # result-file: target blocks_a bytes_a blocks_b bytes_b
  echo
  echo "Heap allocations per request (valgrind dhat; ($ALLOC_WARMUP + $ALLOC_REQUESTS requests) − ($ALLOC_WARMUP requests),"
  echo "one keep-alive connection from curl, divided by $ALLOC_REQUESTS; nginx without its master process):"
  echo
  echo "| target | upstream | allocations per request | bytes allocated per request |"
  echo "|---|---|---:|---:|"
  local t ba ya bb yb label
  while read -r t ba ya bb yb; do
    label=$(label_of "$t")
    printf '| %s | %s | %s | %s |\n' "$label" "$([[ $t == *tls* ]] && echo TLS || echo HTTP)" \
      "$(awk -v a="$ba" -v b="$bb" -v n="$ALLOC_REQUESTS" 'BEGIN {printf "%.1f", (b - a) / n}')" \
      "$(fmt_int "$(awk -v a="$ya" -v b="$yb" -v n="$ALLOC_REQUESTS" 'BEGIN {print (b - a) / n}')")"
  done <"$1"
}

allocs_only() {
  ((TLS == 1)) && make_tls
  start_upstream_nginx
  local res=$OUT/allocs.tsv
  allocs "$res"
  report() {
    echo "### secretproxy vs nginx: heap allocations per request"
    allocs_report "$res"
    echo
    machine_info
  }
  emit report
}

# --- upload mode -----------------------------------------------------------------------------
upload() {
  # secretproxy limits request bodies per route (`max-body`, default 10 MiB): raise it for the test
  : "${BENCH_SP_ROUTE_EXTRA=max-body = $((UPLOAD_SIZE * 2))}"
  start_upstream_sink
  local -a targets=(direct nginx)
  URL[direct]="http://127.0.0.1:${PORT[upstream]}/upload/sink"
  LABEL[direct]="direct to upstream (no proxy)"
  start_nginx_proxy nginx off http
  URL[nginx]="http://127.0.0.1:${PORT[nginx]}/api/upload/sink"
  LABEL[nginx]="nginx, proxy_request_buffering off"
  if [[ $NGINX_ONLY == 0 ]]; then
    start_secretproxy secretproxy warn http
    URL[secretproxy]="http://127.0.0.1:${PORT[secretproxy]}/api/upload/sink"
    LABEL[secretproxy]="secretproxy, RUST_LOG=warn"
    targets+=(secretproxy)
  fi
  local t code
  for t in "${targets[@]:1}"; do
    code=$(curl -s -o "$OUT/check.out" -w '%{http_code}' "${URL[$t]}") || true
    [[ $code == 200 ]] || { cat "$OUT/check.out" >&2 || true; die "$t: GET ${URL[$t]} answered $code, want 200"; }
  done

  local file=$OUT/upload.bin res=$OUT/upload.tsv r enc
  truncate -s "$UPLOAD_SIZE" "$file"   # sparse: reading it costs no disk I/O
  : >"$res"
  for r in $(seq 1 "$UPLOAD_ROUNDS"); do
    for enc in length chunked; do
      for t in "${targets[@]}"; do
        log "upload round $r/$UPLOAD_ROUNDS: $t, $UPLOAD_SIZE bytes, $enc"
        echo "$t $enc $r $(upload_one "$t" "${URL[$t]}" "$file" "$enc")" >>"$res"
      done
    done
  done
  # upload.tsv: 1 target 2 enc 3 round 4 rss_before 5 peak 6 seconds 7 http_code 8 received 9 ticks
  local bad
  bad=$(awk -v n="$UPLOAD_SIZE" '$7 != 200 || $8 != n' "$res" | wc -l)

  report() {
    echo "### Streamed upload through the proxy"
    echo
    echo "One $(awk -v n="$UPLOAD_SIZE" 'BEGIN {printf "%.0f MiB", n / 1048576}') POST per row (curl, Expect off), upstream reads and discards it."
    echo "Peak RSS is the proxy's VmHWM (reset before the upload) and RSS sampled every 20 ms, whichever is higher."
    echo
    echo "| target | body | RSS before | peak RSS during | growth | time | throughput | proxy CPU |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    local t enc r before peak secs code recv ticks
    while read -r t enc r before peak secs code recv ticks; do
      if [[ $t == direct ]]; then
        printf '| %s | %s | – | – | – | %.2f s | %s | – |\n' "${LABEL[$t]}" \
          "$([[ $enc == length ]] && echo Content-Length || echo chunked)" "$secs" \
          "$(awk -v n="$UPLOAD_SIZE" -v s="$secs" 'BEGIN {printf "%.0f MiB/s", n / 1048576 / s}')"
        continue
      fi
      printf '| %s | %s | %s | %s | %s | %.2f s | %s | %.2f s |\n' "${LABEL[$t]}" \
        "$([[ $enc == length ]] && echo Content-Length || echo chunked)" \
        "$(fmt_mib "$before")" "$(fmt_mib "$peak")" "$(fmt_mib $((peak - before)))" "$secs" \
        "$(awk -v n="$UPLOAD_SIZE" -v s="$secs" 'BEGIN {printf "%.0f MiB/s", n / 1048576 / s}')" \
        "$(awk -v k="$ticks" -v hz="$CLK_TCK" 'BEGIN {print k / hz}')"
    done <"$res"
    if [[ $bad != 0 ]]; then
      echo; echo "**Warning: $bad upload(s) did not get 200 with all $UPLOAD_SIZE bytes at the upstream.**"
    fi
    echo
    machine_info
  }
  emit report
}

upload_one() { # target url file enc -> "rss_before peak seconds http_code received ticks"
  local t=$1 url=$2 file=$3 enc=$4 pid before sampler t0 t1 w0 w1 out code recv peak hwm
  local -a ps=() hdr=(-H 'Expect:' -H 'Content-Type: application/octet-stream')
  if [[ $t == direct ]]; then hdr+=(-H "Authorization: Bearer $TOKEN"); else mapfile -t ps < <(pids "$t"); fi
  for pid in "${ps[@]}"; do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; done  # resets VmHWM
  before=$(mem_kib VmRSS "${ps[@]}")
  ( peak=0; while :; do v=$(mem_kib VmRSS "${ps[@]}"); ((v > peak)) && { peak=$v; echo "$peak" >"$OUT/peak"; }; sleep 0.02; done ) &
  sampler=$!
  t0=$(cpu_ticks "${ps[@]}")
  w0=$(date +%s.%N)
  out=$OUT/upload-$t.out
  if [[ $enc == length ]]; then
    code=$(taskset -c "$LOAD_CPUS" curl -sS -o "$out" -w '%{http_code}' -X POST "${hdr[@]}" -T "$file" "$url") || code=000
  else
    code=$(taskset -c "$LOAD_CPUS" curl -sS -o "$out" -w '%{http_code}' -X POST "${hdr[@]}" -T - "$url" <"$file") || code=000
  fi
  w1=$(date +%s.%N)
  t1=$(cpu_ticks "${ps[@]}")
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  hwm=$(mem_kib VmHWM "${ps[@]}")
  peak=$(cat "$OUT/peak" 2>/dev/null || echo 0)
  rm -f "$OUT/peak"
  ((hwm > peak)) && peak=$hwm
  recv=$(grep -o '"received": *[0-9]*' "$out" 2>/dev/null | grep -o '[0-9]*$' || echo 0)
  echo "$before $peak $(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}') $code ${recv:-0} $((t1 - t0))"
}

# --- --store: the shared store's round trip -----------------------------------------------------
# Three secretproxy targets on the same route: no rate limit, an in-process one, and the same one
# in a local redis-server ([state]). The limit never refuses (a million a second), so every request
# runs the check and reaches the upstream; the p50/p99 differences are the check's cost: the
# shared one is one EVALSHA round trip to redis per request. Interleaved rounds, medians.
load_rounds() { # result-file latency(0|1) target... : ROUNDS interleaved rounds over the targets,
  # each a warm-up, then with latency=1 a one-connection run (the latency a single client sees),
  # then the loaded run; one result line per run: target, kind (lat|load), run_wrk's fields
  local res=$1 lat=$2 r t
  shift 2
  : >"$res"
  for r in $(seq 1 "$ROUNDS"); do
    for t in "$@"; do
      wait_quiet
      log "${FUNCNAME[1]} round $r/$ROUNDS: $t"
      run_wrk "$t" "${URL[$t]}" "$CONNS" "$WARMUP" "$OUT/warm.$t" >/dev/null
      if ((lat == 1)); then
        echo "$t lat $(run_wrk "$t" "${URL[$t]}" 1 "$LAT_DURATION" "$OUT/lat.$t.$r" "$LAT_CPUS")" >>"$res"
      fi
      echo "$t load $(run_wrk "$t" "${URL[$t]}" "$CONNS" "$DURATION" "$OUT/load.$t.$r")" >>"$res"
    done
  done
}

store() {
  start_upstream_nginx
  local redis_port=${PORT[redis]}
  port_in_use "$redis_port" && die "port $redis_port is already in use"
  taskset -c "$UPSTREAM_CPUS" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$RUN" >"$LOGS/redis.log" 2>&1 &
  MAIN_PID[redis]=$! KIND[redis]=redis
  PIDS+=("$!")
  wait_listening "$!" "$redis_port" redis
  local limit='rate-limit = { requests = 1000000, per = "1s" }'
  start_secretproxy secretproxy warn http
  BENCH_SP_ROUTE_EXTRA=$limit start_secretproxy secretproxy-limit warn http
  BENCH_SP_ROUTE_EXTRA="$limit
[state]
url = \"redis://127.0.0.1:$redis_port/0\"
timeout = \"1s\"
on-error = \"deny\"" start_secretproxy secretproxy-store warn http
  local -a targets=(secretproxy secretproxy-limit secretproxy-store)
  LABEL[secretproxy]="no rate limit"
  LABEL[secretproxy-limit]="rate limit, in process"
  LABEL[secretproxy-store]="rate limit, shared (redis)"
  local t res=$OUT/store.tsv
  check_targets "${targets[@]}"
  load_rounds "$res" 1 "${targets[@]}"
  # redis-cli INFO commandstats would show the EVALSHA count; the non-2xx column proves none failed.
  report() {
    echo "### Added latency of the shared store (--store)"
    echo
    echo "GET through one route; medians of $ROUNDS rounds. 1 connection for $LAT_DURATION s, then $CONNS connections for $DURATION s."
    echo "The shared limit is one EVALSHA (GCRA Lua script) to a redis-server on loopback per request."
    echo
    echo "| target | p50, 1 conn | p99, 1 conn | added p50 | added p99 | req/s, $CONNS conns | p99, $CONNS conns | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    # store.tsv: 1 target 2 kind 3 req 4 rps 5 p50 6 p99 7 bad ...
    local base50 base99 p50 p99 rps lp99 bad
    base50=$(awk '$1 == "secretproxy" && $2 == "lat" {print $5}' "$res" | median)
    base99=$(awk '$1 == "secretproxy" && $2 == "lat" {print $6}' "$res" | median)
    for t in "${targets[@]}"; do
      p50=$(awk -v t="$t" '$1 == t && $2 == "lat" {print $5}' "$res" | median)
      p99=$(awk -v t="$t" '$1 == t && $2 == "lat" {print $6}' "$res" | median)
      rps=$(awk -v t="$t" '$1 == t && $2 == "load" {print $4}' "$res" | median)
      lp99=$(awk -v t="$t" '$1 == t && $2 == "load" {print $6}' "$res" | median)
      bad=$(awk -v t="$t" '$1 == t {n += $7} END {print n + 0}' "$res")
      printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$(fmt_us "$p50")" "$(fmt_us "$p99")" \
        "$(fmt_us "$(awk -v a="$p50" -v b="$base50" 'BEGIN {printf "%.1f", a - b}')")" \
        "$(fmt_us "$(awk -v a="$p99" -v b="$base99" 'BEGIN {printf "%.1f", a - b}')")" \
        "$(fmt_int "$rps")" "$(fmt_us "$lp99")" "$bad"
    done
    echo
    machine_info
  }
  emit report
}

runtimes() {
  ((TLS == 1)) && make_tls
  start_upstream_nginx
  local -a targets=() ups=(http)
  ((TLS == 1)) && ups+=(tls)
  local up sfx t res=$OUT/runtimes.tsv
  for up in "${ups[@]}"; do
    sfx=$([[ $up == tls ]] && echo -tls || true)
    NGINX_WORKERS=$WORKERS start_nginx_proxy "nginx$sfx" off "$up"
    SP_WORKERS=$WORKERS start_secretproxy "secretproxy$sfx" warn "$up"
    SP_WORKERS=$WORKERS SP_RUNTIME=shared start_secretproxy "secretproxy$sfx-shared" warn "$up"
    LABEL[nginx$sfx]="nginx, $WORKERS worker processes, $up upstream"
    LABEL[secretproxy$sfx]="secretproxy, $WORKERS per-core workers (default), $up upstream"
    LABEL[secretproxy$sfx-shared]="secretproxy, work-stealing runtime ($WORKERS threads), $up upstream"
    targets+=("nginx$sfx" "secretproxy$sfx" "secretproxy$sfx-shared")
  done
  check_targets "${targets[@]}"
  load_rounds "$res" 0 "${targets[@]}"
  report() {
    echo "### Several workers (--runtimes)"
    echo
    echo "Each proxy with $WORKERS workers on CPUs $PROXY_CPUS, sharing them with wrk (-t$THREADS -c$CONNS) and the"
    echo "upstream; medians of $ROUNDS interleaved rounds of $DURATION s. Ratios against nginx with as many workers."
    echo
    echo "| target | req/s | CPU µs/req | p99 | req/s vs nginx | CPU vs nginx | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    # runtimes.tsv: 1 target 2 kind 3 req 4 rps 5 p50 6 p99 7 bad 8 ticks ...
    local rps cpu p99 bad base_rps base_cpu
    for t in "${targets[@]}"; do
      rps=$(awk -v t="$t" '$1 == t {print $4}' "$res" | median)
      cpu=$(awk -v t="$t" -v k="$CLK_TCK" '$1 == t && $3 > 0 {printf "%.2f\n", $8 / k * 1e6 / $3}' "$res" | median)
      p99=$(awk -v t="$t" '$1 == t {print $6}' "$res" | median)
      bad=$(awk -v t="$t" '$1 == t {n += $7} END {print n + 0}' "$res")
      [[ $t == nginx* ]] && { base_rps=$rps; base_cpu=$cpu; }
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$(fmt_int "$rps")" "$cpu" "$(fmt_us "$p99")" \
        "$(ratio "$rps" "$base_rps")" "$(ratio "$cpu" "$base_cpu")" "$bad"
    done
    echo
    machine_info
  }
  emit report
}

emit() { # run a report function; print it and copy it to BENCH_OUT
  local text
  text=$("$1")
  echo
  echo "$text"
  if [[ -n ${BENCH_OUT:-} ]]; then echo "$text" >"$BENCH_OUT"; log "report written to $BENCH_OUT"; fi
}

# --- main ------------------------------------------------------------------------------------
ensure_tools
ensure_secretproxy
setup_work
log "work dir $WORK; mode $MODE$([[ $QUICK == 1 ]] && echo ' (quick)')$( ((ALLOCS == 1)) && echo ', allocations' || true)$( ((PERF == 1)) && echo ', perf' || true)"
"$MODE"
