"""The command line: argument parsing and printing, and the commands that are not a study loop
(reproduce, train, predict). ``status`` and ``best`` start without torch."""

from lbsearch.cli.main import main

__all__ = ['main']
