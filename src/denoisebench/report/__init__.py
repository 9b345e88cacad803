"""The report: run folders found and read, grouped, judged and drawn; the console tables; the classical baselines."""
