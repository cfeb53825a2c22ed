#!/usr/bin/env bash
# Check the systemd units in systemd/:
#   1. `systemd-analyze verify` on the user unit and the system unit; any
#      warning or error about our units (or a non-zero exit) fails the check.
#   2. `systemd-analyze security --offline=yes` on the system unit; the overall
#      exposure must be <= MAX_EXPOSURE (default 2.0).
#
# Usage: scripts/check-units.sh [PATH-TO-SECRETPROXY-BINARY]
#
# Works without systemd running as PID 1 (containers, CI) and without
# secretproxy installed:
#   `systemd-analyze verify` fails when an ExecStart= binary does not exist, and
#   the units point at install locations (/usr/local/bin, ~/.cargo/bin) that are
#   usually empty on a build machine. So the units are copied to a temporary
#   directory (same file names, so unit names and messages are unchanged) and
#   only the ExecStart= program path is rewritten, to $1 if given (e.g.
#   target/release/secretproxy) or else to `true`. verify only checks that the
#   program exists and is executable, it never runs it, so every other line,
#   arguments and specifiers (%h, %E) included, is checked exactly as shipped.
#   Verifying a user unit needs $XDG_RUNTIME_DIR, which root in a container
#   lacks, so a private temporary one is used.
set -euo pipefail

fail() { echo "check-units: $*" >&2; exit 1; }

command -v systemd-analyze >/dev/null 2>&1 \
    || fail "systemd-analyze not found; install the Debian/Ubuntu package 'systemd' (apt-get install systemd)"

MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
user_unit="$root/systemd/secretproxy.service"
system_unit="$root/systemd/secretproxy-system.service"

for u in "$user_unit" "$system_unit"; do
    [[ -f "$u" ]] || fail "missing unit file: $u"
done

if [[ $# -ge 1 ]]; then
    [[ -f "$1" && -x "$1" ]] || fail "not an executable file: $1"
    exec_bin="$(realpath "$1")"
else
    exec_bin="$(command -v true)"
    [[ "$exec_bin" == /* ]] || exec_bin=/bin/true
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -m 0700 "$tmp/units" "$tmp/runtime"

for u in "$user_unit" "$system_unit"; do
    # Only the active ExecStart= line (comments start with '#'); keep any
    # prefix characters such as '-' or '!'.
    sed -E "s|^ExecStart=([-@:+!]*)[^[:space:]]+|ExecStart=\1${exec_bin}|" "$u" \
        > "$tmp/units/$(basename "$u")"
done
t_user="$tmp/units/$(basename "$user_unit")"
t_system="$tmp/units/$(basename "$system_unit")"

export SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_LOG_COLOR=0

# verify: run one unit, fail on non-zero exit or on output about our units.
# Output about other units (e.g. a broken unrelated unit on the host pulled in
# as a dependency) is shown but does not fail the check.
verify() {
    local mode="$1" file="$2" name out rc=0 ours
    name="$(basename "$file")"
    if [[ "$mode" == user ]]; then
        out="$(XDG_RUNTIME_DIR="$tmp/runtime" systemd-analyze --user verify "$file" 2>&1)" || rc=$?
    else
        out="$(systemd-analyze verify "$file" 2>&1)" || rc=$?
    fi
    ours="$(grep -F -e "$name" -e "$tmp" <<<"$out" || true)"
    if [[ $rc -ne 0 || -n "$ours" ]]; then
        echo "check-units: systemd-analyze${mode:+ --$mode} verify $name failed (exit $rc):" >&2
        sed "s|$tmp/units/|systemd/|g; s|$exec_bin|<ExecStart binary>|g" <<<"$out" >&2
        exit 1
    fi
    if [[ -n "$out" ]]; then
        echo "check-units: note (not about our units, ignored) from verify $name:" >&2
        echo "$out" >&2
    fi
}

verify user "$t_user"
verify system "$t_system"

# security: --offline=yes analyses the unit file without a running manager
# (systemd >= 250).
sec_rc=0
sec_out="$(systemd-analyze security --offline=yes "$t_system" 2>&1)" || sec_rc=$?
exposure="$(grep -oE 'Overall exposure level for [^:]+: [0-9]+(\.[0-9]+)?' <<<"$sec_out" \
            | grep -oE '[0-9]+(\.[0-9]+)?$' || true)"
if [[ -z "$exposure" ]]; then
    echo "$sec_out" >&2
    fail "could not read the overall exposure from systemd-analyze security --offline=yes (exit $sec_rc; needs systemd >= 250)"
fi
if ! awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= m + 0) }'; then
    # Show what still counts against the unit.
    grep -E '^✗|^[[:space:]]*✗' <<<"$sec_out" >&2 || true
    fail "system unit exposure $exposure is above $MAX_EXPOSURE"
fi

echo "units: verify ok; system unit exposure $exposure (<= $MAX_EXPOSURE)"
