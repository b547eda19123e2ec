"""CPU seconds of a command and every process it starts, by kind, from the kernel's process accounting.

    sudo python benchmarks/cpu_by_process.py coursegrader autograde 02_elbo --jobs 2 -q

Process accounting (acct(2), root only) writes a record for every process that ends while it is on, forked
kernels included (they never exec, so they have no command of their own to be timed by). Records are grouped as
the grader's processes (root), processes of a sandbox uid that started others (the kernels' templates, and
kernels that ran a subprocess) and the other sandbox processes (kernels). Accounting is machine-wide: every
process that ends meanwhile is counted, so use it on a quiet machine.
"""

from __future__ import annotations

import collections
import ctypes
import os
import struct
import subprocess
import sys
import tempfile

RECORD = struct.Struct("=BBHIIIIIIf8H16s")  # struct acct_v3 (linux/acct.h)
AHZ = 100  # the records' clock ticks per second


def _comp(value: int) -> int:
    """comp_t: a 13-bit mantissa and a 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def measure(command: list[str]) -> tuple[int, list[tuple[str, str, int, float]]]:
    """Run `command` with accounting on: (its exit code, [(kind, name, count, CPU seconds)], most CPU first)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with tempfile.NamedTemporaryFile(prefix="acct-") as log:
        if libc.acct(log.name.encode()) != 0:
            raise OSError(ctypes.get_errno(), "acct(2) needs root")
        try:
            code = subprocess.call(command)
        finally:
            libc.acct(None)
        data = open(log.name, "rb").read()
    rows = [RECORD.unpack_from(data, i) for i in range(0, len(data) - RECORD.size + 1, RECORD.size)]
    parents = {row[7] for row in rows}  # ac_ppid
    totals: dict[tuple[str, str], list] = collections.defaultdict(lambda: [0, 0.0])
    for row in rows:
        uid, pid, utime, stime, name = row[4], row[6], row[10], row[11], row[-1]
        kind = "grader" if uid == os.getuid() else ("sandbox, parent" if pid in parents else "sandbox")
        total = totals[(kind, name.split(b"\0")[0].decode(errors="replace"))]
        total[0] += 1
        total[1] += (_comp(utime) + _comp(stime)) / AHZ
    table = [(kind, name, count, cpu) for (kind, name), (count, cpu) in totals.items()]
    return code, sorted(table, key=lambda row: -row[3])


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    code, table = measure(sys.argv[1:])
    for kind, name, count, cpu in table:
        print(f"{kind:16s} {name:16s} {count:4d} processes {cpu:8.2f} CPU s")
    print(f"{'total':16s} {'':16s} {sum(r[2] for r in table):4d} processes {sum(r[3] for r in table):8.2f} CPU s")
    return code


if __name__ == "__main__":
    sys.exit(main())
