"""Throwaway services on loopback for the tests, the fault drill and the
benchmark: a redis-server on a free port, an SMTP sink with faults (aiosmtpd,
a dev dependency), an HTTP helper, waits, a graceful stop for spawned processes
and the burst's idle-turn measure. Test infrastructure, so it lives
with the tests; scripts/drill.py and scripts/bench.py put this folder on
sys.path. Nothing in the application imports it."""
import email
import email.policy
import signal
import socket
import subprocess
import tempfile
import threading
import time


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, message='condition'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError('timed out after %.1fs waiting for %s' % (timeout, message))


def stop_gracefully(proc, timeout=20):
    """SIGINT (a consumer finishes the task in hand), then kill after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def idle_turn_gaps(rows, limit):
    """Stretches (seconds) during which a turn was free while a run of the
    burst had not started yet, from each run's started_at and finished_at."""
    events = sorted([(r.started_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows])
    running = started = 0
    gaps, free_since = [], None
    for at, step in events:
        running += step
        started += step == 1
        idle = running < limit and started < len(rows)
        if idle and free_since is None:
            free_since = at
        elif not idle and free_since is not None:
            gaps.append((at - free_since).total_seconds())
            free_since = None
    return gaps


def answers(url):
    """Whether something answers `url` on loopback (any HTTP reply within 1 s)."""
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def call(method, url, body=None):
    """(status, JSON body) of an HTTP request on loopback; (None, None) when
    nothing answers."""
    import json
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, json.load(res)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return None, None


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix='nightshift-redis-')
        self.proc = None

    @property
    def url(self):
        return 'redis://127.0.0.1:%d/0' % self.port

    def start(self):
        self.proc = subprocess.Popen(
            ['redis-server', '--port', str(self.port), '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--dir', self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), message='redis-server to start')

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def _pings(client):
    try:
        return client.ping()
    except Exception:
        return False


# An RCPT reply for SmtpSink.rcpt_replies: the connection closes, no reply.
HANG_UP = 'hang up'


def _hang_up(server):
    # After the reply is written: it goes out first, then the connection closes.
    import asyncio
    asyncio.get_running_loop().call_soon(server.transport.close)


class SmtpSink:
    """aiosmtpd on loopback keeping every message it accepts.

    `refuse` maps an address to the reply its RCPT gets (e.g. '550 no such
    user'); `logins` records AUTH logins.
    """

    def __init__(self):
        self.messages = []
        self.refuse = {}
        # Faults, for the delivery tests: replies the next RCPTs get in turn
        # (a 421 also hangs up, as real servers do); a reply to DATA instead
        # of 250; seconds of silence after DATA (the message is kept: only
        # the reply is late); hang up right after accepting a message.
        self.rcpt_replies = []
        self.data_reply = None
        self.data_delay = 0
        self.hang_up_after_data = False
        # For connection reuse: who said EHLO (one entry a session), how
        # many said QUIT, replies the next RSETs and MAILs get in turn (a
        # 421 hangs up too). An RCPT reply HANG_UP closes without a reply.
        self.greeted = []
        self.quits = 0
        self.rset_replies = []
        self.mail_replies = []
        self._servers = []
        self.logins = []
        self.controller = None
        self.port = free_port()
        self._lock = threading.Lock()

    # aiosmtpd handler hooks
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self._lock:
            self.greeted.append(session.peer)
            self._servers.append(server)
        return responses

    async def handle_QUIT(self, server, session, envelope):
        with self._lock:
            self.quits += 1
        return '221 Bye'

    async def handle_RSET(self, server, session, envelope):
        reply = self.rset_replies.pop(0) if self.rset_replies else '250 OK'
        if reply.startswith('421'):
            _hang_up(server)
        return reply

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.mail_replies.pop(0) if self.mail_replies else None
        if reply:
            if reply.startswith('421'):
                _hang_up(server)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return '250 OK'

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.pop(0) if self.rcpt_replies else self.refuse.get(address)
        if reply == HANG_UP:
            server.transport.close()
            return '421 never written: the connection is closed'
        if reply:
            if reply.startswith('421'):
                _hang_up(server)
            return reply
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        with self._lock:
            self.messages.append({'from': envelope.mail_from, 'at': time.perf_counter(),
                                  'to': list(envelope.rcpt_tos), 'message': message,
                                  'raw': envelope.original_content or envelope.content,
                                  'reply_late': bool(self.data_delay)})
        if self.data_delay:
            import asyncio
            await asyncio.sleep(self.data_delay)
        if self.hang_up_after_data:
            _hang_up(server)
        return '250 Message accepted'

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b'secret-pw', handled=False)

    def start(self, auth=False):
        from aiosmtpd.controller import Controller
        kwargs = {}
        if auth:
            kwargs = dict(authenticator=self.authenticate, auth_require_tls=False)
        self.controller = Controller(self, hostname='127.0.0.1', port=self.port, **kwargs)
        self.controller.start()

    def hang_up_all(self):
        """Close every open connection from the server's side, as a server
        does with clients that stay quiet too long."""
        import asyncio
        with self._lock:
            servers, self._servers = self._servers, []

        async def close_all():
            for server in servers:
                server.transport.close()
            await asyncio.sleep(0.05)  # the sockets close on the loop's next turns
        asyncio.run_coroutine_threadsafe(close_all(), self.controller.loop).result(10)

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count, timeout=15.0):
        wait_until(lambda: len(self.messages) >= count, timeout,
                   message='%d message(s) in the SMTP sink' % count)
        return self.messages
