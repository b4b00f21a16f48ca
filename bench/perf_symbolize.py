#!/usr/bin/env python3
"""Names the frames `perf script` left as [unknown] in our own binaries.

The perf shipped here (6.1) unwinds our RelWithDebInfo binaries but cannot read their symbol
tables, so their frames come out as "[unknown] (/path/userstatus-query)". This filter maps each such
address back to the binary's symbol with the process's memory map (saved from /proc/PID/maps while
it ran) and `nm`.

    perf script ... | bench/perf_symbolize.py MAPS > named.txt
"""
import bisect
import re
import subprocess
import sys

FRAME = re.compile(r"^(\s+)([0-9a-f]+) \[unknown\] \((/[^)]+)\)$")


def load_maps(path):
    """{binary path: [(start, end, file offset)]} of its executable mappings."""
    maps = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 6 or "x" not in parts[1]:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        maps.setdefault(parts[5], []).append((start, end, int(parts[2], 16)))
    return maps


def load_symbols(binary):
    """Sorted (address, name) of the binary's functions."""
    out = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            syms.append((int(parts[0], 16), parts[2]))
    return syms


def main():
    maps = load_maps(sys.argv[1])
    symbols = {}
    for line in sys.stdin:
        m = FRAME.match(line.rstrip("\n"))
        if not m or m.group(3) not in maps:
            sys.stdout.write(line)
            continue
        ip, binary = int(m.group(2), 16), m.group(3)
        # perf prints either the run-time address or, when it mapped it already, the address in
        # the binary; p_vaddr == p_offset for the text segment of our PIE binaries.
        addr = ip
        for start, end, off in maps[binary]:
            if start <= ip < end:
                addr = ip - start + off
                break
        if binary not in symbols:
            symbols[binary] = load_symbols(binary)
        syms = symbols[binary]
        i = bisect.bisect_right(syms, (addr, "\xff")) - 1
        name = "%s+0x%x" % (syms[i][1], addr - syms[i][0]) if i >= 0 else None
        sys.stdout.write("%s%x %s (%s)\n" % (m.group(1), ip, name, binary) if name else line)


if __name__ == "__main__":
    main()
