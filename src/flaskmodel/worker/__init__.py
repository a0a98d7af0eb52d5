"""The worker tier: Celery app, thin tasks, and the per-process context they run in."""
