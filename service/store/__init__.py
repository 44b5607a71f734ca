"""The database and what is kept in it: engine and sessions (``db``), the ORM tables (``models``,
changed only with a migration: ``migrate`` and migrations/), the bytes of states and masks
(``features``), the state width learned from the logs (``shape``), model versions and their checkpoints
(``registry``), the training-jobs table (``jobs``), counts (``stats``), the apprentice and shadow
switches and their counts (``modes``, ``mode_stats``), and the group-commit write path
(``group_commit``, ``multirow_insert``, ``wal_checkpoints``).

May import: the core (``service.settings``, ``service.errors``, ``service.progress``) and the database
libraries. Never the agent library, nor any other folder of the service.
"""
