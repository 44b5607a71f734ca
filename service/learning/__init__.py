"""The learner: the trainer (``trainer``) with its parts — pretrain/retrain jobs (``job_runner``), the
online loop (``online``), the hand-off of a job's agent between them (``handoff``), saving versions and
publishing weights (``publishing``), filling replays (``replay``) — the demonstrations read from the
logs (``demos``), apprentice mode's live demonstrations (``live_demos``), the apprentice and shadow
reports' off-policy estimates (``mode_value``) and the agent library's door (``agents``).

May import: the core, :mod:`service.store`, :mod:`service.ingest`, :mod:`service.serving` (it publishes
into the policy store), :mod:`service.feedback` (live transitions) and the agent library. Never the API.
"""
