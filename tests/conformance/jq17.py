#!/usr/bin/env python3
"""Reference numbers for tests/it/jq_conformance.rs: runs the single-output cases of the jq
project's tests/jq.test under jq 1.7 (libjq bundled by PyPI's `jq` package, 1.7.0 = jq 1.7.1)
with the same reading and counting rules as the Rust test.

    python3 -m venv /tmp/jqvenv && /tmp/jqvenv/bin/pip install jq==1.7.0
    /tmp/jqvenv/bin/python tests/conformance/jq17.py ../shared/conformance/jq.test
"""
import os
import resource
import select
import signal
import sys

import jq


def cases(path):
    """(line, program, input, [expected]) for each non-%%FAIL block, as jq's test runner reads."""
    lines = open(path, encoding="utf-8").read().split("\n")
    skip = lambda line: line.strip() == "" or line.startswith("#")
    i, out = 0, []
    while i < len(lines):
        line = lines[i]
        if skip(line):
            i += 1
            continue
        if line.startswith("%%FAIL"):
            i += 2  # the program, then error lines up to a blank line
            while i < len(lines) and not skip(lines[i]):
                i += 1
            continue
        program, at = line, i + 1
        data = lines[i + 1] if i + 1 < len(lines) else ""
        i += 2
        expected = []
        while i < len(lines) and not skip(lines[i]):
            expected.append(lines[i])
            i += 1
        out.append((at, program, data, expected))
    return out


def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def run_case(program, data, expected):
    try:
        want = jq.compile(".").input_text(expected).first()
        got = jq.compile(program).input_text(data).all()
        return len(got) == 1 and same(got[0], want)
    except Exception:
        return False


def isolated(program, data, expected):
    """One case in a child process (libjq aborts its process on some cases), 10 s, 2 GiB."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        ok = run_case(program, data, expected)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 10)
    answer = os.read(read, 1) if ready else b""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
    return answer == b"1"


def main(path):
    single = [c for c in cases(path) if len(c[3]) == 1]
    passed, failed = 0, []
    for at, program, data, (expected,) in single:
        ok = isolated(program, data, expected)
        if ok:
            passed += 1
        else:
            failed.append((at, program))
    print(f"jq 1.7.1: {passed} of {len(single)} single-output cases pass ({100 * passed / len(single):.1f} %)")
    for at, program in failed:
        print(f"  fail line {at}: {program}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/conformance/jq.test")
