"""`python benchmarks/sandbox_cost.py`: is the sandbox available here, and what does it cost per notebook?

The cost that matters is kernel start: every notebook is graded in a fresh kernel, so the sandbox's
provisioner, bwrap's mounts and the uid switch are paid once per notebook. Measured as the median of a
few starts, each until the kernel answers kernel_info, with and without the sandbox.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from coursegrader.nbgrader_api import use_this_environment
from coursegrader.sandbox import KERNEL_NAME, KernelBox, Limits, unavailable_reason


def _start_seconds(kernel: str, cwd: Path, box: KernelBox | None = None) -> float:
    start = time.perf_counter()
    if box is None:
        km = KernelManager(kernel_name=kernel)
    else:
        km = KernelManager(kernel_name=kernel, transport="ipc", connection_file=box.connection_file(),
                           kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(box.kernels)]))
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        return time.perf_counter() - start
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def measure(repeats: int = 5) -> tuple[float, float]:
    """Median kernel start in seconds: (plain python3 kernel, sandboxed kernel). Alternates the two."""
    use_this_environment()
    with tempfile.TemporaryDirectory(prefix="sandbox-cost-") as tmp:
        work = Path(tmp) / "autograded" / "student"
        work.mkdir(parents=True)
        plain, sandboxed = [], []
        with KernelBox(str(work)) as box:
            for _ in range(repeats):
                plain.append(_start_seconds("python3", work))
                sandboxed.append(_start_seconds(KERNEL_NAME, work, box))
    return statistics.median(plain), statistics.median(sandboxed)


def report(repeats: int = 5) -> str:
    reason = unavailable_reason()
    if reason:
        return f"sandbox: NOT available ({reason}); autograde refuses to grade here without --no-sandbox"
    limits = Limits()
    plain, boxed = measure(repeats)
    return "\n".join([
        "sandbox: available (bubblewrap)",
        f"limits per kernel: {limits.memory_bytes / 1024**3:g} GiB address space, {limits.processes} processes, "
        f"{limits.file_bytes / 1024**2:g} MiB per file, {limits.open_files} open files",
        f"kernel start, median of {repeats}: {plain:.2f} s plain, {boxed:.2f} s sandboxed "
        f"({boxed - plain:+.2f} s per notebook)",
    ])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="kernel starts to time, each way (default: 5)")
    print(report(parser.parse_args().repeats))
