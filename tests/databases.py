"""The session Redis's databases: one per test module (or fixture) whose stack must share
nothing with the others. Database 0 is the session stack's. The session's redis-server is started
with 32 databases (``procs.start_redis``); ``test_databases_are_distinct`` keeps this list honest.
"""

FAKE_STACK = 1
REMOTE_MODELS = 2
WORKER_CRASH = 3
WORKER_CRASH_CHUNKS = 4
TIME_LIMITS = 5
OVERLOAD = 6
SHUTDOWN = 7
SHUTDOWN_DRAIN = 8
METRICS = 9
RECORDER = 10
AUTH = 12
SHUTDOWN_SWEEP = 13
OPENAPI_FUZZ = 14
LOGS = 15
VERSION_ROLLOUT = 16
RABBITMQ_STORE = 17
SWEEPER = 18
RATE_LIMIT = 19
NGINX_LIMITS = 20
WATCHDOG = 21
FRONT_DOOR = 22
FAST_ROUTES = 23
PUBLISHER = 24
SYNC_CONSUMER = 25

#: Every database above, by name.
ALL = {name: value for name, value in globals().items() if name.isupper() and name != "ALL"}
