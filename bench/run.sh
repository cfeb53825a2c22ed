#!/usr/bin/env bash
# secretproxy vs nginx: the same proxy job side by side on loopback.
#
#   bench/run.sh              throughput + latency (wrk), interleaved rounds, Markdown tables
#   bench/run.sh --quick      short smoke run of the same
#   bench/run.sh --upload     peak RSS of each proxy while a 1 GiB body streams through it
#   bench/run.sh --nginx-only skip secretproxy (tests the harness without a build)
#
# The job: GET /api/<rest> -> http://127.0.0.1:<upstream>/<rest> with
# "Authorization: Bearer <token>" injected. The upstream answers 401 if the header is missing or
# wrong, so every 2xx counted proves the injection happened. See bench/README.md for the method.
#
# Environment (defaults in brackets; --quick lowers the time-based ones):
#   SECRETPROXY_BIN      secretproxy binary [build with `cargo build --release` in the repo]
#   BENCH_DURATION       seconds per wrk run [10]          BENCH_ROUNDS       interleaved rounds [3]
#   BENCH_WARMUP         warmup seconds per target [3]     BENCH_CONNECTIONS  wrk connections [32]
#   BENCH_THREADS        wrk threads [1]                   BENCH_LAT_DURATION seconds of the 1-connection run [5]
#   BENCH_LOGGED         1 = also run both proxies with access logging on [1]
#   BENCH_PROXY_CPUS     cpu list for the proxies [0]      BENCH_LOAD_CPUS    cpu list for wrk/curl [1]
#   BENCH_UPSTREAM_CPUS  cpu list for the upstream [same as BENCH_LOAD_CPUS]
#   BENCH_LAT_CPUS       cpu list for everything during the 1-connection run [BENCH_LOAD_CPUS];
#                        empty = keep the throughput pinning
#   BENCH_PORT_BASE      first port; uses base..base+2, base+707, base+708, [18080]
#   BENCH_UPLOAD_SIZE    bytes for --upload [1073741824]   BENCH_UPLOAD_ROUNDS [1]
#   BENCH_QUIET_PCT      other processes may use this % of one core during a run [15]; before each
#                        run wait up to BENCH_QUIET_WAIT s [120] for that, redo a disturbed run
#                        up to BENCH_RETRIES times [2]
#   BENCH_SP_ROUTE_EXTRA extra TOML lines for the secretproxy route [--upload: max-body = 2 x size]
#   BENCH_OUT            also write the report (Markdown) to this file
#   BENCH_KEEP           1 = keep the temp dir with configs, logs and raw wrk output
set -euo pipefail

MODE=throughput
NGINX_ONLY=0
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --upload) MODE=upload ;;
    --nginx-only) NGINX_ONLY=1 ;;
    --no-logged) BENCH_LOGGED=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

if [[ $QUICK == 1 ]]; then
  : "${BENCH_DURATION:=3}" "${BENCH_ROUNDS:=1}" "${BENCH_WARMUP:=1}" "${BENCH_LAT_DURATION:=2}"
  : "${BENCH_UPLOAD_SIZE:=268435456}"
fi
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
LAT_DURATION=${BENCH_LAT_DURATION:-5}
LOGGED=${BENCH_LOGGED:-1}
PROXY_CPUS=${BENCH_PROXY_CPUS:-0}
LOAD_CPUS=${BENCH_LOAD_CPUS:-1}
UPSTREAM_CPUS=${BENCH_UPSTREAM_CPUS:-$LOAD_CPUS}
LAT_CPUS=${BENCH_LAT_CPUS-$LOAD_CPUS}
PORT_BASE=${BENCH_PORT_BASE:-18080}
UPLOAD_SIZE=${BENCH_UPLOAD_SIZE:-1073741824}
UPLOAD_ROUNDS=${BENCH_UPLOAD_ROUNDS:-1}
QUIET_PCT=${BENCH_QUIET_PCT:-15}
QUIET_WAIT=${BENCH_QUIET_WAIT:-120}
RETRIES=${BENCH_RETRIES:-2}

UPSTREAM_PORT=$PORT_BASE            # 18080
NGINX_PORT=$((PORT_BASE + 1))       # 18081
NGINX_LOG_PORT=$((PORT_BASE + 2))   # 18082
SP_PORT=$((PORT_BASE + 707))        # 18787
SP_LOG_PORT=$((PORT_BASE + 708))    # 18788

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
ensure_tools() {
  NGINX=$(find_tool nginx /usr/sbin/nginx)
  WRK=$(find_tool wrk /usr/bin/wrk)
  if [[ -z $NGINX || -z $WRK ]]; then
    # another apt run may be installing them right now: wait for it first
    local i
    for i in $(seq 1 60); do
      pgrep -x 'apt-get|apt|dpkg' >/dev/null 2>&1 || break
      ((i == 1)) && log "apt/dpkg is running; waiting for it (up to 5 min)"
      sleep 5
    done
    NGINX=$(find_tool nginx /usr/sbin/nginx)
    WRK=$(find_tool wrk /usr/bin/wrk)
  fi
  if [[ -z $NGINX || -z $WRK ]]; then
    [[ $(id -u) == 0 ]] || die "nginx and wrk are needed: sudo apt-get install -y nginx wrk"
    log "installing nginx and wrk with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y nginx wrk >&2
    NGINX=$(find_tool nginx /usr/sbin/nginx)
    WRK=$(find_tool wrk /usr/bin/wrk)
  fi
  [[ -n $NGINX && -n $WRK ]] || die "nginx or wrk still missing"
  for t in curl taskset awk; do command -v "$t" >/dev/null || die "$t is needed"; done
  if [[ $MODE == upload ]]; then command -v python3 >/dev/null || die "python3 is needed for --upload"; fi
}

ensure_secretproxy() {
  [[ $NGINX_ONLY == 1 ]] && return
  if [[ -z ${SECRETPROXY_BIN:-} ]]; then
    log "building secretproxy (cargo build --release)"
    (cd "$REPO" && cargo build --release --quiet --bin secretproxy) >&2
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    [[ $target == /* ]] || target=$REPO/$target
    SECRETPROXY_BIN=$target/release/secretproxy
  fi
  [[ -x $SECRETPROXY_BIN ]] || die "no secretproxy binary at $SECRETPROXY_BIN"
}

# --- processes -------------------------------------------------------------------------------
WORK=""
PIDS=()
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

wait_listening() { # pid port name
  local i
  for i in $(seq 1 100); do
    kill -0 "$1" 2>/dev/null || { tail -n 20 "$WORK/$3.log" >&2 || true; die "$3 exited at startup"; }
    port_in_use "$2" && return 0
    sleep 0.1
  done
  die "$3 does not listen on 127.0.0.1:$2"
}

# pids NAME -> the process ids whose CPU and memory count for that target (nginx: master + workers)
declare -A MAIN_PID KIND
pids() {
  local p=${MAIN_PID[$1]}
  echo "$p"
  [[ ${KIND[$1]} == nginx ]] && { pgrep -P "$p" || true; }
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

start_nginx() { # name port conf-body cpus
  local name=$1 port=$2 conf=$WORK/$1.conf
  mkdir -p "$WORK/$name"
  {
    [[ $(id -u) == 0 ]] && echo "user root;"   # workers must reach the temp dir
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/$name/nginx.pid;
error_log $WORK/$name.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $WORK/$name/body;
    proxy_temp_path       $WORK/$name/proxy;
    fastcgi_temp_path     $WORK/$name/fastcgi;
    uwsgi_temp_path       $WORK/$name/uwsgi;
    scgi_temp_path        $WORK/$name/scgi;
    keepalive_requests 1000000;
    keepalive_timeout  75s;
$3
}
EOF
  } >"$conf"
  port_in_use "$port" && die "port $port is already in use"
  taskset -c "$4" "$NGINX" -e "$WORK/$name.log" -p "$WORK/$name" -c "$conf" &
  MAIN_PID[$name]=$!
  KIND[$name]=nginx
  PIDS+=("$!")
  wait_listening "$!" "$port" "$name"
}

start_upstream_nginx() {
  start_nginx upstream "$UPSTREAM_PORT" "
    access_log off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        default_type application/json;
        location / {
            if (\$http_authorization != \"Bearer $TOKEN\") {
                return 401 '{\"error\":\"missing or wrong Authorization\"}';
            }
            return 200 '{\"id\":42,\"name\":\"bench\",\"items\":[1,2,3],\"ok\":true}';
        }
    }" "$UPSTREAM_CPUS"
}

start_upstream_sink() {
  port_in_use "$UPSTREAM_PORT" && die "port $UPSTREAM_PORT is already in use"
  taskset -c "$UPSTREAM_CPUS" python3 "$BENCH_DIR/upload-sink.py" "$UPSTREAM_PORT" "$TOKEN" \
    >"$WORK/upstream.log" 2>&1 &
  MAIN_PID[upstream]=$!
  KIND[upstream]=other
  PIDS+=("$!")
  wait_listening "$!" "$UPSTREAM_PORT" upstream
}

start_nginx_proxy() { # name port access-log(off|on)
  local access="access_log off;"
  [[ $3 == on ]] && access="access_log $WORK/$1-access.log combined;"
  start_nginx "$1" "$2" "
    $access
    upstream backend {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        client_max_body_size 0;            # no limit: --upload sends 1 GiB
        location /api/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Authorization \"Bearer $TOKEN\";
            proxy_request_buffering off;   # stream uploads like secretproxy does
        }
    }" "$PROXY_CPUS"
}

start_secretproxy() { # name port rust_log(or "" = unset: the binary's default filter)
  local name=$1 port=$2 conf=$WORK/$1.toml
  cat >"$conf" <<EOF
[server]
listen = "127.0.0.1:$port"

[secrets.bench]
env = "BENCH_TOKEN"

[routes.api]
path = "/api/{*rest}"
methods = ["GET", "POST"]
upstream = "http://127.0.0.1:$UPSTREAM_PORT/{rest}"
headers = { Authorization = "Bearer \${bench}" }
${BENCH_SP_ROUTE_EXTRA:-}
EOF
  port_in_use "$port" && die "port $port is already in use"
  local -a env=(-u RUST_LOG BENCH_TOKEN="$TOKEN" SECRETPROXY_WORKER_THREADS=1)
  [[ -n $3 ]] && env+=(RUST_LOG="$3")
  env "${env[@]}" taskset -c "$PROXY_CPUS" "$SECRETPROXY_BIN" serve --config "$conf" \
    >"$WORK/$name.log" 2>&1 &
  MAIN_PID[$name]=$!
  KIND[$name]=secretproxy
  PIDS+=("$!")
  wait_listening "$!" "$port" "$name"
}

check_route() { # name url -> the proxy answers 200 with the upstream's body
  local code
  code=$(curl -s -o "$WORK/check.out" -w '%{http_code}' "$2") || true
  [[ $code == 200 ]] || { cat "$WORK/check.out" >&2 || true; die "$1: GET $2 answered $code, want 200"; }
}

# --- wrk -------------------------------------------------------------------------------------
# wrk prints e.g. "99%    1.23ms"; to microseconds
to_us() { awk -v v="$1" 'BEGIN {
  n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
  if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1e6;
  else if (u == "m") m = 6e7; else m = 0 / 0
  printf "%.1f", n * m }'; }

# run_wrk target url conns seconds outfile [cpus] -> "requests rps p50us p99us errors cpu_ticks wall_s"
run_wrk() {
  local name=$1 url=$2 conns=$3 secs=$4 out=$5 cpus=${6:-$LOAD_CPUS} t0 t1 w0 w1 p
  local -a ps=() hdr=()
  # the direct baseline is the upstream itself: send the header a proxy would have injected
  if [[ $name == direct ]]; then hdr=(-H "Authorization: Bearer $TOKEN"); else mapfile -t ps < <(pids "$name"); fi
  local -a up=()
  mapfile -t up < <(pids upstream)
  local u0 u1 c0 c1 s0 s1 st0 st1
  t0=$(cpu_ticks "${ps[@]}")
  u0=$(cpu_ticks "${up[@]}")
  children_ticks >"$WORK/c0.$BASHPID"; c0=$(<"$WORK/c0.$BASHPID")
  read -r s0 st0 < <(machine_ticks)
  w0=$(date +%s.%N)
  taskset -c "$cpus" "$WRK" -t"$THREADS" -c"$conns" -d"${secs}s" --latency "${hdr[@]}" "$url" >"$out" 2>&1 \
    || { cat "$out" >&2; die "wrk failed against $name"; }
  w1=$(date +%s.%N)
  read -r s1 st1 < <(machine_ticks)
  children_ticks >"$WORK/c1.$BASHPID"; c1=$(<"$WORK/c1.$BASHPID")
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
  echo "$req $rps $p50 $p99 $bad $((t1 - t0)) $p $other $((st1 - st0))"
}

machine_ticks() { # -> busy ticks (all CPUs, without idle, iowait and steal), steal ticks
  awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

children_ticks() { # CPU of this shell's finished children (here: wrk), in clock ticks
  # `times` must run in this shell, not in a pipe or $(...) subshell that has no children yet
  times >"$WORK/times.$BASHPID"
  awk -v hz="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    printf "%d", t * hz + 0.5 }' "$WORK/times.$BASHPID"
}

# --- reporting -------------------------------------------------------------------------------
median() { sort -g | awk '{a[NR] = $1} END {
  if (NR == 0) {print "nan"; exit}
  if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$3"; }  # target column file
fmt_us() { awk -v v="$1" 'BEGIN { if (v == "nan" || v == "") print "–";
  else if (v >= 1000) printf "%.2f ms", v / 1000; else printf "%.0f µs", v }'; }
fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
fmt_int() { printf '%.0f' "$1" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta'; }

machine_info() {
  local cpu kernel sp_ver
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  kernel=$(uname -sr)
  echo "- Machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $kernel"
  echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'); wrk: $("$WRK" -v 2>&1 | head -n1 | awk '{print $2}')"
  if [[ $NGINX_ONLY == 0 ]]; then
    sp_ver=$("$SECRETPROXY_BIN" --version 2>/dev/null | head -n1) || sp_ver="(no --version)"
    echo "- secretproxy: $sp_ver ($SECRETPROXY_BIN), repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'none yet')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + local changes'), $(rustc --version 2>/dev/null || echo 'rustc ?')"
  fi
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# --- throughput mode ------------------------------------------------------------------------
throughput() {
  start_upstream_nginx
  local -a targets=(nginx)
  declare -A URL LABEL
  URL[direct]="http://127.0.0.1:$UPSTREAM_PORT/bench/item"
  LABEL[direct]="direct to upstream (no proxy)"
  start_nginx_proxy nginx "$NGINX_PORT" off
  URL[nginx]="http://127.0.0.1:$NGINX_PORT/api/bench/item"
  LABEL[nginx]="nginx, access_log off"
  if [[ $NGINX_ONLY == 0 ]]; then
    start_secretproxy secretproxy "$SP_PORT" warn
    URL[secretproxy]="http://127.0.0.1:$SP_PORT/api/bench/item"
    LABEL[secretproxy]="secretproxy, RUST_LOG=warn"
    targets+=(secretproxy)
  fi
  if [[ $LOGGED == 1 ]]; then
    start_nginx_proxy nginx-log "$NGINX_LOG_PORT" on
    URL[nginx-log]="http://127.0.0.1:$NGINX_LOG_PORT/api/bench/item"
    LABEL[nginx-log]="nginx, access_log on (file)"
    targets+=(nginx-log)
    if [[ $NGINX_ONLY == 0 ]]; then
      start_secretproxy secretproxy-log "$SP_LOG_PORT" ""
      URL[secretproxy-log]="http://127.0.0.1:$SP_LOG_PORT/api/bench/item"
      LABEL[secretproxy-log]="secretproxy, default log filter (stderr to file)"
      targets+=(secretproxy-log)
    fi
  fi

  # the upstream refuses requests without the token; each proxy must get 200
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "${URL[direct]}")
  [[ $code == 401 ]] || die "upstream without Authorization answered $code, want 401"
  local t
  for t in "${targets[@]}"; do check_route "$t" "${URL[$t]}"; done

  declare -A IDLE_RSS
  for t in "${targets[@]}"; do IDLE_RSS[$t]=$(mem_kib VmRSS $(pids "$t")); done

  log "warmup: ${WARMUP}s per target"
  for t in "${targets[@]}"; do run_wrk "$t" "${URL[$t]}" "$CONNS" "$WARMUP" "$WORK/warmup-$t.txt" >/dev/null; done

  local res=$WORK/results.tsv lat=$WORK/latency.tsv r order line
  : >"$res"; : >"$lat"
  local -a all=(direct "${targets[@]}")
  for r in $(seq 1 "$ROUNDS"); do
    # interleaved; every other round in reverse order so no target always goes first
    if ((r % 2)); then order=("${all[@]}"); else order=(); for ((i = ${#all[@]} - 1; i >= 0; i--)); do order+=("${all[$i]}"); done; fi
    for t in "${order[@]}"; do
      log "round $r/$ROUNDS: $t, ${DURATION}s, $CONNS connections"
      local try
      for try in $(seq 0 "$RETRIES"); do
        wait_quiet
        line=$(run_wrk "$t" "${URL[$t]}" "$CONNS" "$DURATION" "$WORK/wrk-$t-$r.txt")
        # redo a run that other processes disturbed (CPU > BENCH_QUIET_PCT % of a core)
        awk -v hz="$CLK_TCK" -v max="$QUIET_PCT" '{exit !(100 * $8 / hz / $7 > max)}' <<<"$line" || break
        ((try < RETRIES)) && log "  run disturbed by other processes ($(awk -v hz="$CLK_TCK" '{printf "%.0f", 100 * $8 / hz / $7}' <<<"$line") % of a core); again"
      done
      echo "$t $r $line" >>"$res"
      log "  -> $(awk '{printf "%s req/s, p50 %s us, p99 %s us, errors %s, proxy cpu %s ticks, other %s, steal %s", $4, $5, $6, $7, $8, $10, $11}' <<<"$t $r $line")"
    done
    # one request at a time has no parallelism to gain from a second core, but each cross-core
    # wakeup costs (on VMs up to ~70 µs): move everything onto one CPU for this part
    [[ -n $LAT_CPUS ]] && repin "$LAT_CPUS" "$LAT_CPUS" "${targets[@]}"
    for t in "${order[@]}"; do
      log "round $r/$ROUNDS: $t, ${LAT_DURATION}s, 1 connection"
      wait_quiet
      line=$(run_wrk "$t" "${URL[$t]}" 1 "$LAT_DURATION" "$WORK/lat-$t-$r.txt" "${LAT_CPUS:-$LOAD_CPUS}")
      echo "$t $r $line" >>"$lat"
    done
    [[ -n $LAT_CPUS ]] && repin "$PROXY_CPUS" "$UPSTREAM_CPUS" "${targets[@]}"
  done

  # results.tsv columns: 1 target 2 round 3 requests 4 rps 5 p50us 6 p99us 7 errors 8 ticks 9 wall
  #                      10 ticks of other processes 11 steal ticks
  local errors
  errors=$(awk '{n += $7} END {print n + 0}' "$res" "$lat")
  # runs other processes disturbed (after the retries) leave the medians when the target has
  # undisturbed ones; results.tsv keeps them all
  local all_res=$res dropped
  res=$WORK/results-clean.tsv
  awk -v hz="$CLK_TCK" -v max="$QUIET_PCT" '
    {line[NR] = $0; t[NR] = $1; bad[NR] = 100 * $10 / hz / $9 > max; if (!bad[NR]) clean[$1]++}
    END {for (i = 1; i <= NR; i++) if (!bad[i] || !clean[t[i]]) print line[i]}' "$all_res" >"$res"
  dropped=$(( $(wc -l <"$all_res") - $(wc -l <"$res") ))

  report() {
    echo "### secretproxy vs nginx: prefix route with Authorization injected"
    echo
    echo "wrk -t$THREADS -c$CONNS, ${DURATION}s per run, $ROUNDS interleaved round(s), median shown;"
    echo "each proxy pinned to CPU $PROXY_CPUS with one worker (nginx worker_processes 1;"
    echo "secretproxy SECRETPROXY_WORKER_THREADS=1), wrk on CPU $LOAD_CPUS, upstream nginx on CPU $UPSTREAM_CPUS."
    echo
    echo "| target | req/s | req/s range | p50 | p99 | proxy CPU per request | proxy CPU busy | RSS idle | RSS after load | peak RSS |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local t rps lo hi p50 p99 cpu busy rss hwm idle
    for t in "${all[@]}"; do
      rps=$(col "$t" 4 "$res" | median)
      lo=$(col "$t" 4 "$res" | sort -g | head -n1)
      hi=$(col "$t" 4 "$res" | sort -g | tail -n1)
      p50=$(col "$t" 5 "$res" | median)
      p99=$(col "$t" 6 "$res" | median)
      if [[ $t == direct ]]; then
        cpu="–"; busy="–"; rss="–"; hwm="–"; idle="–"
      else
        cpu=$(awk -v t="$t" -v hz="$CLK_TCK" '$1 == t {print $8 * 1e6 / hz / $3}' "$res" | median)
        cpu=$(awk -v v="$cpu" 'BEGIN {printf "%.1f µs", v}')
        busy=$(awk -v t="$t" -v hz="$CLK_TCK" '$1 == t {print 100 * $8 / hz / $9}' "$res" | median)
        busy=$(awk -v v="$busy" 'BEGIN {printf "%.0f %%", v}')
        idle=$(fmt_mib "${IDLE_RSS[$t]}")
        rss=$(fmt_mib "$(mem_kib VmRSS $(pids "$t"))")
        hwm=$(fmt_mib "$(mem_kib VmHWM $(pids "$t"))")
      fi
      printf '| %s | %s | %s–%s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" \
        "$(fmt_int "$rps")" "$(fmt_int "$lo")" "$(fmt_int "$hi")" "$(fmt_us "$p50")" "$(fmt_us "$p99")" \
        "$cpu" "$busy" "$idle" "$rss" "$hwm"
    done
    echo
    echo "Unloaded latency (wrk -c1, ${LAT_DURATION}s per run, median of rounds$([[ -n $LAT_CPUS ]] && echo ", all processes on CPU $LAT_CPUS")):"
    echo
    echo "| target | p50 | p99 | added p50 | added p99 |"
    echo "|---|---:|---:|---:|---:|"
    local d50 d99
    d50=$(col direct 5 "$lat" | median)
    d99=$(col direct 6 "$lat" | median)
    for t in "${all[@]}"; do
      p50=$(col "$t" 5 "$lat" | median)
      p99=$(col "$t" 6 "$lat" | median)
      if [[ $t == direct ]]; then
        printf '| %s | %s | %s | – | – |\n' "${LABEL[$t]}" "$(fmt_us "$p50")" "$(fmt_us "$p99")"
      else
        printf '| %s | %s | %s | %s | %s |\n' "${LABEL[$t]}" "$(fmt_us "$p50")" "$(fmt_us "$p99")" \
          "$(fmt_us "$(awk -v a="$p50" -v b="$d50" 'BEGIN {print a - b}')")" \
          "$(fmt_us "$(awk -v a="$p99" -v b="$d99" 'BEGIN {print a - b}')")"
      fi
    done
    echo
    echo "CPU per request = utime+stime of the proxy (nginx: master + worker) over the run / requests"
    echo "completed. CPU busy = that CPU time / wall time (100 % = the proxy's core was the limit)."
    echo "RSS: VmRSS / VmHWM from /proc (nginx: master + worker summed)."
    if [[ $errors != 0 ]]; then echo; echo "**Warning: $errors non-2xx responses or socket errors during the runs.**"; fi
    # columns 10 and 11: ticks used by other processes, steal ticks
    local bg
    bg=$(awk -v hz="$CLK_TCK" '{o = 100 * $10 / hz / $9; s = 100 * $11 / hz / $9
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
      local n_rps s_rps n_cpu s_cpu verdict
      n_rps=$(col nginx 4 "$res" | median); s_rps=$(col secretproxy 4 "$res" | median)
      n_cpu=$(awk -v hz="$CLK_TCK" '$1 == "nginx" {print $8 * 1e6 / hz / $3}' "$res" | median)
      s_cpu=$(awk -v hz="$CLK_TCK" '$1 == "secretproxy" {print $8 * 1e6 / hz / $3}' "$res" | median)
      verdict=$(awk -v a="$s_rps" -v b="$n_rps" -v c="$s_cpu" -v d="$n_cpu" 'BEGIN {
        printf "req/s %.2fx nginx (%s), CPU per request %.2fx nginx (%s)", a / b, (a >= b ? "met" : "missed"),
          c / d, (c <= d ? "met" : "missed") }')
      echo
      echo "Target (at least nginx's req/s, at most its CPU per request): $verdict."
    fi
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
  declare -A URL LABEL
  URL[direct]="http://127.0.0.1:$UPSTREAM_PORT/upload/sink"
  LABEL[direct]="direct to upstream (no proxy)"
  start_nginx_proxy nginx "$NGINX_PORT" off
  URL[nginx]="http://127.0.0.1:$NGINX_PORT/api/upload/sink"
  LABEL[nginx]="nginx, proxy_request_buffering off"
  if [[ $NGINX_ONLY == 0 ]]; then
    start_secretproxy secretproxy "$SP_PORT" warn
    URL[secretproxy]="http://127.0.0.1:$SP_PORT/api/upload/sink"
    LABEL[secretproxy]="secretproxy, RUST_LOG=warn"
    targets+=(secretproxy)
  fi
  local t
  for t in "${targets[@]:1}"; do check_route "$t" "${URL[$t]}"; done

  local file=$WORK/upload.bin res=$WORK/upload.tsv r enc
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
  ( peak=0; while :; do v=$(mem_kib VmRSS "${ps[@]}"); ((v > peak)) && { peak=$v; echo "$peak" >"$WORK/peak"; }; sleep 0.02; done ) &
  sampler=$!
  t0=$(cpu_ticks "${ps[@]}")
  w0=$(date +%s.%N)
  out=$WORK/upload-$t.out
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
  peak=$(cat "$WORK/peak" 2>/dev/null || echo 0)
  rm -f "$WORK/peak"
  ((hwm > peak)) && peak=$hwm
  recv=$(grep -o '"received": *[0-9]*' "$out" 2>/dev/null | grep -o '[0-9]*$' || echo 0)
  echo "$before $peak $(awk -v a="$w0" -v b="$w1" 'BEGIN {printf "%.3f", b - a}') $code ${recv:-0} $((t1 - t0))"
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
WORK=$(mktemp -d /tmp/secretproxy-bench.XXXXXX)
chmod 755 "$WORK"
log "work dir $WORK; mode $MODE$([[ $QUICK == 1 ]] && echo ' (quick)')"
"$MODE"
