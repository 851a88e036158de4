"""`python -m kmsplug` is the `kmsplug` command."""

from kmsplug.cli import main

main()
