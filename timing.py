"""Throughput timing shared by tools/benchmark.py and tools/benchmark_reference.py; the standard library only, so
that the reference side runs under a python that has torch and timm but no paddle."""
import statistics
import time


def timed(fn, images_per_call, repeats, warmup=2, min_seconds=1.0):
    """Median images/s of fn over `repeats` timings (each at least min_seconds of calls), after warmup calls."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(calls * images_per_call / elapsed)
    return statistics.median(rates), rates
