"""Huey's own floor for scripts/bench.py: a no-op task on the same Redis and
consumer settings. Each run counts itself in Redis so the bench can tell
when the queue is drained."""
import os

from huey import RedisHuey

huey = RedisHuey('nightshift-bench-noop', url=os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/15'),
                 results=False)


@huey.task()
def noop():
    huey.storage.conn.incr('nightshift-bench-noop-done')
