"""`python -m tidegate.cli`: the same as the `tidegate` script."""

from tidegate.cli import main

main()
