"""Timing, peak memory, matmul peak and table printing shared by the benchmark scripts (not project code)."""
from __future__ import annotations

import ctypes
import math
import os
import platform
import threading
import time
from typing import Any, Callable

import torch


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 1) -> tuple[float, Any]:
    """Best (minimum) wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls; and the last result.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), out


def interleaved_times(fns: dict[str, Callable[[], Any]], device: str, rounds: int,
                      min_call_s: float = 0.0) -> dict[str, float]:
    """Best wall time per call of each function over ``rounds`` rounds that call every function in turn.

    Interleaving spreads a shared machine's load changes over all paths alike, so ratios stay fair. With
    ``min_call_s`` a function is called back to back as many times as take about that long per round (the
    time per call is their mean), so that a short call is measured in the steady state of a long job, not
    with the caches the previous path left cold.
    """
    calls = {}
    for name, fn in fns.items():
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        calls[name] = max(1, math.ceil(min_call_s / max(time.perf_counter() - t0, 1e-9))) if min_call_s else 1
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    return best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so that the next RSS baseline is honest."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA ``max_memory_allocated`` (absolute), or on CPU the sampled peak RSS
    increase over the RSS at entry (every 1 ms; after ``malloc_trim``), in bytes: ``.peak``."""

    def __init__(self, device: str):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            _trim_heap()
            self._base = _rss_bytes()
            self._max = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, _rss_bytes())
            self.peak = self._max - self._base


def matmul_peak_tflops(device: str, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """Measured dense matmul throughput (TFLOP/s) on ``n x n`` operands: the MFU denominator by default."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds, _ = timed(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds / 1e12


def device_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads " \
           f"of {os.cpu_count()} cores (torch {torch.__version__})"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    """A fixed-width text table (markdown-compatible) of ``rows`` (missing cells print as '-')."""
    cells = [[str(r.get(c, "-")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")
