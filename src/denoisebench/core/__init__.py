"""The framework-free core: config, model spec, noise, records and their schemas, sweeps (standard library and NumPy only)."""
