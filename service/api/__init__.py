"""The HTTP layer: the FastAPI app and its lifespan (``app``, ``state``), thin routes (``routes_*``),
request/response schemas, limits and the one mapping of domain errors to status codes (``errors``).

May import: every folder below it (store, ingest, serving, feedback, learning) and the core. Nothing
imports it but the commands (``service.cli``, ``service.quickstart``).
"""
