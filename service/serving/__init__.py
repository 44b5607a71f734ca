"""The request path of ``/act``: the serving policy and its catalogue (``policy_store``, which decodes
a model version's checkpoint into a NumPy network), the poller that keeps them in step with the
database (``poller``), choosing actions (``choice``), the group-commit decision log
(``decision_log``), and apprentice and shadow modes (``apprentice``: what they add to a decision;
``shadow``: the modes a replica follows and the shadow version's policy), and a feature-network model's
serving (``feature_policy``: decoded and bound to the catalogue's item features; ``feature_choice``:
retrieval, exact scoring and exploration).

May import: the core, :mod:`service.store`, :mod:`service.ingest` (the catalogue) and the agent
library's NumPy inference. Never feedback (its sibling), learning or the API.
"""
