"""`python -m denoisebench.bench`: the benchmark command line (cli.py)."""

import sys

from denoisebench.bench.cli import main

sys.exit(main())
