"""How many downloads stream at once, and the slot each one holds."""
import threading

from bottle import HTTPResponse

from errors import Busy


class DownloadSlots:
    """A client that reads slowly holds a web thread for as long as it takes
    (waitress blocks the writer once its buffer is full), so downloads get
    only some of the threads and health checks and the API keep the rest."""

    def __init__(self, count):
        self.free = threading.BoundedSemaphore(count)

    def take(self):
        if not self.free.acquire(blocking=False):
            raise Busy('every download slot is in use; try again shortly')
        return Held(self.free)


class Held:
    """A taken download slot, given back when the response is done with,
    however it ends: finished, failed, or closed by waitress when the client
    went away."""

    def __init__(self, slot):
        self.slot, self.body = slot, None

    def wrap(self, body):
        self.body = iter(body)
        return self

    def __iter__(self):
        return self

    def __next__(self):
        try:
            item = next(self.body)
        except BaseException:
            self.close()
            raise
        if isinstance(item, HTTPResponse):
            # An error in place of the body: Bottle sends it and never
            # closes what it came from.
            self.close()
        return item

    def close(self):
        slot, self.slot = self.slot, None
        if slot is None:
            return
        try:
            # Closing the generator runs its `with` blocks: the cursor and the
            # transaction end, so the database stops working for nobody.
            getattr(self.body, 'close', lambda: None)()
        finally:
            slot.release()
