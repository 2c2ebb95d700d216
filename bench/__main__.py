"""`python -m bench [SECTION] [--quick]`: run the benchmarks from a checkout."""

from bench.cli import main

main()
