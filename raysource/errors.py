"""The whole raysource error tree, in one place (each error is defined where it is raised).

See ``raysource.journal.errors`` for the documented tree.
"""

from raysource.journal.errors import *  # noqa: F403
from raysource.journal.errors import __all__  # noqa: F401
