"""`python -m app.cli`: the same command line as `tasktracker`."""

from app.cli.main import main

main()
