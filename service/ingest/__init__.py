"""Data in: the item catalogue (``catalogue``: items ↔ action indices, import and activation) and the
all-or-nothing import of logged interactions (``importer``, with its parts ``reading``, ``validation``
and ``writing``), plus a small generator of example data in the same format (``synthetic``).

May import: the core and :mod:`service.store`. Never serving, feedback, learning, the API or the agent
library.
"""
