"""DQfD recommender service: logged interactions → pretrained agent → actions over HTTP → online learning.

The folders follow the data, lowest layer first; a module may import its own folder and the layers
below it, never one above (tests/test_import_boundaries.py checks this):

- ``settings``, ``errors``, ``progress`` (modules here) — the core every layer uses;
- :mod:`service.store` — the database: engine, tables, migrations, state width, model registry, jobs
  table, group-commit writes;
- :mod:`service.ingest` — data in: the item catalogue and the logged-interactions import;
- :mod:`service.serving` — ``/act``: the policy store, the model poller, choosing, the decision log;
- :mod:`service.feedback` — ``/feedback``: rewards, the feedback log, decisions → live transitions
  (serving and feedback are siblings: neither imports the other);
- :mod:`service.learning` — the trainer: jobs (pretraining), online learning, publishing versions;
- :mod:`service.api` — the HTTP layer over all of the above;
- ``cli``, ``quickstart``, ``__main__`` (modules here) — the commands, on top.

See "Where things live" in docs/service.md.
"""
