# Helpers shared by bench/run and bench/tls (sourced).

# cpu_ticks "PIDS": user + system clock ticks used so far by these processes.
cpu_ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# rss_kib PID: resident memory in KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# to_us: wrk's latency figures (`512.00us`, `1.20ms`, `2s`) in microseconds.
to_us() { awk '{ v = $1; if (v ~ /ms$/) { sub(/ms$/, "", v); v *= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1e6 } printf "%.0f\n", v }'; }
# need_tools: wrk and nginx (Debian's packages) when missing.
need_tools() {
  if ! command -v wrk >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
    echo "bench: installing wrk and nginx-light" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq wrk nginx-light >/dev/null
  fi
}
# ratio I J: the median over rounds of scenario I's CPU/req over scenario J's (the caller's CPU
# array holds each scenario's figures, one per round).
ratio() {
  paste <(echo "${CPU[$1]}" | tr ' ' '\n' | grep -v '^$') <(echo "${CPU[$2]}" | tr ' ' '\n' | grep -v '^$') |
    awk '{ print $1 / $2 }' | median
}
