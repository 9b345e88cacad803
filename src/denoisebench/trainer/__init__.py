"""What both trainers share for one run, framework-free: data on disk, start-up, profiler set-up, epoch records, failure and signal handling."""
