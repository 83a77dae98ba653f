"""`python -m allotment` is the `allot` command."""

from allotment.cli.main import main

main()
