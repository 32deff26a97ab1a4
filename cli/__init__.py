"""The ``raysource`` command line (``raysource.cli.main``; ``python -m raysource.cli``).

Argument parsing, one-line errors and printing only: each command calls the library function
that does the work (``raysource.devnode``, ``raysource.ops``, ``raysource.loadtest``,
``raysource.readside``, ``raysource.journal.cassandra``, ``System.connect``). One module per
group of commands, registered by :func:`raysource.cli.main.build_parser`.
"""
