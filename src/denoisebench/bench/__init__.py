"""Benchmarks: the suite's trainers against hand-written and tight loops, the fast paths, the profiler's cost, the GPU check."""
