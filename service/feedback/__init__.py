"""The request path of ``/feedback`` and what becomes of it: judging and recording rewards
(``recording``), the group-commit feedback log behind ``/feedback`` (``feedback_log``), and turning
decisions whose rewards are in into live transitions for the learner (``transitions``).

May import: the core, :mod:`service.store` and :mod:`service.ingest`. Never serving (its sibling),
learning, the API or the agent library.
"""
