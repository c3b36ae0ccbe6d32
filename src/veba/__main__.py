"""`python -m veba` is the `veba` command."""

from veba.cli import main

main()
