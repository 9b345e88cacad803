"""What is measured and against what: the NVML/RAPL profiler, image quality, the hardware tables, the roofline."""
