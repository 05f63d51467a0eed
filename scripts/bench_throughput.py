#!/usr/bin/env python
"""Issue #16's burst benchmark: a burst of small runs end to end against
plain smtplib sending the same messages, side by side, each part in its own
process. scripts/bench.py runs it as its "Bursts" section:

    .venv/bin/python scripts/bench.py --burst-only [--burst-runs 1000] [--burst-postgres]

What it builds, on loopback, bounded in time, cleaned up after:

- a throwaway redis-server, an SMTP sink in its own process (counts each
  Message-ID and recipient, keeps one message as the sample), the state
  database (SQLite, or a throwaway PostgreSQL database) with the demo shop's
  50 customers, and `python server.py` (waitress) on a free port;
- consumers started as the Procfile's `worker:` line starts them (its flags
  are read from the Procfile), one set per burst;
- the baseline: plain smtplib, one reused connection per thread, as many
  threads as the burst's workers, sending N copies of a run's own message
  (the sink's sample, re-addressed) to the same sink, from a process of its
  own;
- bursts of N runs of the `customers` report, one recipient each: POSTed at
  once to `/api/runs` by several client threads, or due in one schedule
  slot; with 2 consumer processes; with `-k process` workers;
- the 30-run turn check of scripts/bench_burst.py (longest idle turn).

A burst counts as done when every run is in a terminal state and the sink
holds a message for each delivered run. Each run must be delivered once:
in the state database (one sent delivery) and at the sink (its
Message-ID and recipient once). Lost or doubled deliveries are what
`problems` lists; timings never fail anything.
"""
import asyncio
import collections
import contextlib
import datetime
import email.parser
import email.policy
import http.client
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'scripts')
for _path in (ROOT, SCRIPTS, os.path.join(ROOT, 'tests')):
    if _path not in sys.path:
        sys.path.insert(0, _path)

REPORT = 'customers'
CUSTOMERS = 50  # rows of the report: issue #16's "small report"
CLIENT_THREADS = 8  # POSTing at once: more than waitress's 4 threads
WARM_UP = 'warm-up@example.org'  # the recipient of the run before each burst
RUN_ID = re.compile(r'<nightshift-run-(\d+)[-@]')
TICKS = os.sysconf('SC_CLK_TCK')


# -- the SMTP sink, in its own process ---------------------------------------

class BurstSink:
    """aiosmtpd handler: counts messages per (Message-ID, recipient), their
    bytes and the time of the last one; keeps one message (the sample the
    baseline sends copies of) and nothing else."""

    def __init__(self, delay=0.0):
        self.reset()
        self.sample = None
        # Seconds before answering each DATA: a mail server further away
        # than loopback, or one that checks what it accepts.
        self.delay = delay

    def reset(self):
        self.keys = collections.Counter()
        self.messages = self.bytes = self.sessions = 0
        self.first_at = self.last_at = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sessions += 1
        return responses

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        for rcpt in envelope.rcpt_tos:
            self.keys['%s %s' % (headers.get('Message-ID', ''), rcpt)] += 1
        self.messages += 1
        self.bytes += len(raw)
        self.last_at = time.time()
        self.first_at = self.first_at or self.last_at
        if self.sample is None and RUN_ID.search(headers.get('Message-ID', '')):
            self.sample = raw.decode('ascii', 'replace')
        if self.delay:
            await asyncio.sleep(self.delay)
        return '250 Message accepted'

    def answer(self, command):
        if command == 'reset':
            self.reset()
            return {}
        if command == 'count':
            return {'messages': self.messages}
        if command.startswith('delay '):
            self.delay = float(command.split()[1])
            return {}
        if command == 'sample':
            return {'sample': self.sample}
        return {'messages': self.messages, 'bytes': self.bytes, 'sessions': self.sessions,
                'first_at': self.first_at, 'last_at': self.last_at, 'keys': dict(self.keys)}


def sink_main():
    """The sink process: prints its port, then answers one JSON line per
    command line on stdin (reset, count, sample, stats) until stdin closes."""
    from aiosmtpd.controller import Controller
    from loopback import free_port
    handler = BurstSink(float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
    port = free_port()
    controller = Controller(handler, hostname='127.0.0.1', port=port,
                            data_size_limit=0)
    controller.start()
    print(port, flush=True)

    async def on_loop(command):  # read the counts where they are written
        return handler.answer(command)
    for line in sys.stdin:
        answer = asyncio.run_coroutine_threadsafe(on_loop(line.strip()),
                                                  controller.loop).result(30)
        print(json.dumps(answer), flush=True)
    controller.stop()


class Sink:
    def __init__(self, delay=0.0):
        self.proc = subprocess.Popen([sys.executable, __file__, '--sink', str(delay)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self._lock = threading.Lock()

    def ask(self, command):
        with self._lock:
            self.proc.stdin.write(command + '\n')
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(30)


# -- the baseline: plain smtplib, in its own process -------------------------

def baseline_messages(sample, count):
    """`count` copies of a run's message, each with its own recipient and
    Message-ID, as text ready for smtplib: built before the clock starts."""
    message = email.parser.Parser(policy=email.policy.compat32).parsestr(sample)
    texts = []
    for i in range(count):
        to = 'base%d@example.org' % i
        message.replace_header('To', to)
        message.replace_header('Message-ID', '<baseline-%d@nightshift.test>' % i)
        texts.append(([to], message.as_string()))
    return texts


def baseline_main(port, count, threads, sample_path):
    """Send `count` prebuilt copies of the sample from `threads` threads over
    one reused connection each (scripts/bench_smtp.py's way); print seconds,
    CPU seconds and the message size as JSON."""
    from bench_smtp import run_threads, smtplib_way, split
    with open(sample_path) as f:
        prebuilt = baseline_messages(f.read(), count)
    wall, cpu = run_threads(split(prebuilt, threads), smtplib_way(port, reuse=True))
    print(json.dumps({'seconds': wall, 'cpu': cpu, 'bytes': len(prebuilt[0][1])}))


def baseline(sink, sample, count, threads, workdir):
    """(messages/s, CPU s of the sender, sink CPU s, bytes per message)."""
    path = os.path.join(workdir, 'sample.eml')
    with open(path, 'w') as f:
        f.write(sample)
    sink.ask('reset')
    sink_cpu = cpu_seconds(sink.proc.pid)
    proc = subprocess.run([sys.executable, __file__, '--baseline', str(sink.port), str(count),
                           str(threads), path], capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError('baseline failed: %s' % proc.stderr[-2000:])
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    got = sink.ask('stats')
    if got['messages'] != count:
        raise RuntimeError('the sink got %d of the baseline\'s %d messages'
                           % (got['messages'], count))
    return (count / info['seconds'], info['cpu'], cpu_seconds(sink.proc.pid) - sink_cpu,
            info['bytes'])


# -- CPU seconds of a process and its descendants -----------------------------

def _stat(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    # after the name: state ppid ... utime(14) stime cutime cstime, 1-based
    return int(fields[1]), sum(int(v) for v in fields[11:15])


def cpu_seconds(root):
    """utime+stime of `root` and every live descendant, and of the children
    they have reaped (cutime, cstime), in seconds."""
    parents, own = {}, {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                parents[int(name)], own[int(name)] = _stat(int(name))
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in own and pid not in tree:
            tree.add(pid)
            todo += [child for child, parent in parents.items() if parent == pid]
    return sum(own[pid] for pid in tree) / TICKS


def self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the system under test -----------------------------------------------------

def procfile_worker_args():
    """The flags of the Procfile's `worker:` line after `tasks.huey`: the
    documented consumer settings."""
    with open(os.path.join(ROOT, 'Procfile')) as f:
        for line in f:
            if line.startswith('worker:'):
                words = shlex.split(line.split(':', 1)[1])
                return words[words.index('tasks.huey') + 1:]
    raise RuntimeError('the Procfile has no worker: line')


def with_worker_type(args, worker_type):
    args = list(args)
    for flag in ('--worker-type', '-k'):
        if flag in args:
            args[args.index(flag) + 1] = worker_type
            return args
    return args + ['--worker-type', worker_type]


def workers_of(args):
    for flag in ('--workers', '-w'):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return 1


def stop(proc, sig, timeout=30):
    """`sig` (the consumer's graceful signal), then kill after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class System:
    """redis-server, the sink, the state database with the demo shop, the
    web server; consumers started per burst."""

    def __init__(self, workdir, cleanup, postgres=False):
        import bench_burst
        import demo
        from loopback import RedisServer, answers, free_port, wait_until
        from models import bind_database
        self.workdir = workdir
        self.redis = RedisServer()
        self.redis.start()
        cleanup.callback(shutil.rmtree, self.redis.dir, ignore_errors=True)
        cleanup.callback(self.redis.stop)
        self.sink = Sink()
        cleanup.callback(self.sink.stop)
        self.database_url = (bench_burst.postgres_database(cleanup) if postgres
                             else 'sqlite:///%s' % os.path.join(workdir, 'state.db'))
        # bench_burst's environment: SMTP to the sink, the shop in the state
        # database, the repo's reports, no API token.
        self.env = bench_burst.environment(workdir, self.database_url, self.redis.url,
                                           self.sink.port)
        shop = demo.open_shop(self.database_url)
        demo.seed(customers=CUSTOMERS, orders=200)
        shop.close()
        bind_database(self.database_url)
        self.log = open(os.path.join(workdir, 'processes.log'), 'ab')
        cleanup.callback(self.log.close)
        self.port = port = free_port()
        self.base = 'http://127.0.0.1:%d' % port
        self.server = subprocess.Popen([sys.executable, 'server.py', '--port', str(port)],
                                       cwd=ROOT, env=self.env, stdout=self.log,
                                       stderr=subprocess.STDOUT)
        cleanup.callback(stop, self.server, signal.SIGTERM)
        wait_until(lambda: answers(self.base + '/healthz'), timeout=30, message='server.py')
        self.consumer_args = procfile_worker_args()
        self.default_limit = self.settings().max_concurrent_per_report
        self.graceful = (signal.SIGTERM if 'TERM' in self.consumer_args
                         else signal.SIGINT)

    def settings(self, **overrides):
        from settings import load_settings
        env = dict(self.env, **overrides)
        return load_settings(env['NIGHTSHIFT_CONFIG'], environ=env)

    def clear(self):
        """A clean slate between bursts: no runs, schedules, consumers, tasks."""
        import redis

        from models import Consumer, Delivery, Run, Schedule
        Delivery.delete().execute()
        Run.delete().execute()
        Schedule.delete().execute()
        Consumer.delete().execute()
        redis.Redis.from_url(self.redis.url).flushdb()

    @contextlib.contextmanager
    def consumers(self, count, args, env=None):
        """`count` consumer processes with `args`; yields their Popens once
        each has registered its workers."""
        from loopback import wait_until
        from models import Consumer
        procs = [subprocess.Popen([sys.executable, '-m', 'huey.bin.huey_consumer', 'tasks.huey']
                                  + args, cwd=ROOT, env=env or self.env, stdout=self.log,
                                  stderr=subprocess.STDOUT) for _ in range(count)]
        try:
            expected = count * workers_of(args)
            wait_until(lambda: (Consumer.select().count() and
                                sum(c.workers for c in Consumer.select()) >= expected),
                       timeout=60, interval=0.1, message='%d consumer workers' % expected)
            yield procs
        finally:
            for proc in procs:
                stop(proc, self.graceful)

    def post_run(self, to, connection=None):
        conn = connection or http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
        body = json.dumps({'report': REPORT, 'to': [to]})
        conn.request('POST', '/api/runs', body, {'Content-Type': 'application/json'})
        res = conn.getresponse()
        data = res.read()
        if connection is None:
            conn.close()
        if res.status != 202:
            raise RuntimeError('POST /api/runs: %d %s' % (res.status, data[:300]))
        return json.loads(data)['id']

    def post_all(self, count):
        """`count` POSTs from CLIENT_THREADS keep-alive clients, released
        together; (run ids, errors)."""
        port = self.port
        ids, errors = [], []
        go = threading.Barrier(CLIENT_THREADS)

        def client(numbers):
            conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
            go.wait()
            for i in numbers:
                try:
                    ids.append(self.post_run('burst%d@example.org' % i, conn))
                except Exception as exc:  # counted, and the burst goes on
                    errors.append(str(exc))
                    conn.close()
                    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
            conn.close()
        threads = [threading.Thread(target=client, args=(range(i, count, CLIENT_THREADS),))
                   for i in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ids, errors

    def cpu(self, consumers):
        """CPU seconds so far of each part."""
        return {'consumers': sum(cpu_seconds(p.pid) for p in consumers),
                'web server': cpu_seconds(self.server.pid),
                'sink': cpu_seconds(self.sink.proc.pid),
                'redis-server': cpu_seconds(self.redis.proc.pid),
                'bench (clients, polling)': self_cpu()}


# -- one burst -----------------------------------------------------------------

Outcome = collections.namedtuple('Outcome', [
    'kind', 'consumers', 'worker_type', 'workers', 'limit', 'runs', 'seconds', 'runs_per_s',
    'posting_s', 'first_created_s', 'created_s', 'delivered', 'problems', 'cpu',
    'baseline'], defaults=(float('nan'),))
NAN = float('nan')


def wait_for_runs(system, runs_query, count, timeout, stall=60, quiet_until=0.0):
    """Poll until `count` runs of `runs_query` have ended and the sink holds
    as many messages as there are delivered runs; give up after `timeout`
    s, or after `stall` s without progress (counted from `quiet_until`, an
    epoch time such as a slot still ahead). Returns whether they did."""
    from peewee import fn

    from models import Run
    from vocab import FINAL, RunStatus
    deadline = time.monotonic() + timeout
    last, moved = None, time.monotonic() + max(0.0, quiet_until - time.time())
    while time.monotonic() < deadline:
        statuses = dict(runs_query().select(Run.status, fn.COUNT(Run.id))
                        .group_by(Run.status).tuples())
        ended = sum(n for status, n in statuses.items() if status in FINAL)
        sent = system.sink.ask('count')['messages']
        if ended >= count and sent >= statuses.get(RunStatus.DELIVERED, 0):
            time.sleep(0.5)  # a late double would come now
            return True
        progress = (ended, sent, sum(statuses.values()))
        if progress != last:
            # Not before quiet_until: the first look (no runs yet) would
            # otherwise start the stall clock a minute before the slot.
            last, moved = progress, max(moved, time.monotonic())
        elif time.monotonic() - moved > stall:
            return False
        time.sleep(0.25)
    return False


def check(runs, sink_stats):
    """Lost and doubled deliveries: each run delivered with one sent
    delivery in the state database, and its Message-ID and recipient once
    at the sink."""
    from models import Delivery
    from vocab import DeliveryStatus, RunStatus
    problems = []
    by_id = {run.id: run for run in runs}
    seen = collections.Counter()
    strangers = 0
    for key, times in sink_stats['keys'].items():
        if key.endswith(' ' + WARM_UP):
            continue  # the warm-up run's, should it come late
        match = RUN_ID.search(key)
        if match and int(match.group(1)) in by_id:
            seen[int(match.group(1))] += times
        else:
            strangers += times
    sent = collections.Counter(
        run_id for run_id, in Delivery.select(Delivery.run).where(
            Delivery.run.in_(list(by_id)), Delivery.status == DeliveryStatus.SENT).tuples())
    not_delivered = [r.id for r in runs if r.status != RunStatus.DELIVERED]
    lost = [run_id for run_id in by_id if seen[run_id] == 0]
    doubled = [run_id for run_id, n in seen.items() if n > 1]
    recorded = [run_id for run_id in by_id if sent[run_id] != 1]
    if not_delivered:
        problems.append('%d runs not delivered' % len(not_delivered))
    if lost:
        problems.append('%d runs lost (no message at the sink)' % len(lost))
    if doubled:
        problems.append('%d runs delivered twice or more at the sink' % len(doubled))
    if strangers:
        problems.append('%d messages at the sink belong to no run of the burst' % strangers)
    if recorded:
        problems.append('%d runs without exactly one sent delivery' % len(recorded))
    return problems


def limit_env(system, limit, **more):
    """The consumers' environment; `limit` (None: the default) is their
    max_concurrent_per_report, which only the claim in the consumer reads."""
    extra = dict(more)
    if limit is not None:
        extra['NIGHTSHIFT_MAX_CONCURRENT_PER_REPORT'] = str(limit)
    return dict(system.env, **extra)


def posted_burst(system, count, consumers=1, worker_type='thread', limit=None, timeout=600,
                 kind='posted at once', **env):
    """N runs POSTed at once to the running server.py, after one warm-up
    run (imports, connections, the report read once, as in a consumer that
    has been up a while). `env`: more of the consumers' environment."""
    from models import Run
    args = with_worker_type(system.consumer_args, worker_type)
    system.clear()
    with system.consumers(consumers, args, limit_env(system, limit, **env)) as procs:
        warm = system.post_run(WARM_UP)
        wait_for_runs(system, lambda: Run.select().where(Run.id == warm), 1, 60)
        system.sink.ask('reset')
        before = system.cpu(procs)
        started = time.time()
        ids, errors = system.post_all(count)
        posting = time.time() - started
        done = wait_for_runs(system, lambda: Run.select().where(Run.id.in_(ids)), len(ids),
                             timeout)
        after = system.cpu(procs)
    runs = list(Run.select().where(Run.id.in_(ids)))
    problems = ['%d POSTs failed (first: %s)' % (len(errors), errors[0])] if errors else []
    return outcome(system, kind, consumers, args, limit, count, started, runs,
                   problems, done, before, after, posting_s=posting)


def slot_burst(system, count, real_slot=True, limit=None, timeout=600, worker_type='thread'):
    """N schedules of the report due in one cron slot, each with its own
    recipient and the slot's minute and hour as cron (once a day). With
    `real_slot` the slot is a minute boundary 25-85 s ahead, the consumer
    is up (and warmed by one run) before it, and the clock starts at the
    slot; else the slot has just passed, the schedules are due as they are
    made and the clock starts with the consumer (--smoke: no minute's wait)."""
    import schedules
    from models import Run, Schedule, utcnow
    from reports import create_catalogue
    system.clear()
    # A 1,000-run slot needs room: max_schedules (200) and max_runs_per_tick
    # (100) are raised to the burst, so that one tick creates every run.
    defaults = system.settings()
    room = {'NIGHTSHIFT_MAX_SCHEDULES': str(max(count, defaults.max_schedules)),
            'NIGHTSHIFT_MAX_RUNS_PER_TICK': str(max(count, defaults.max_runs_per_tick))}
    settings = system.settings(**room)
    registry = create_catalogue(settings)
    now = utcnow()
    if real_slot:
        slot = (now + datetime.timedelta(seconds=85)).replace(second=0, microsecond=0)
    else:
        slot = now.replace(second=0, microsecond=0)
        now = slot - datetime.timedelta(seconds=1)  # its mark before the slot: due
    for i in range(count):
        schedules.create_schedule(registry, settings, {
            'name': 'burst-%04d' % i, 'report': REPORT, 'to': ['slot%d@example.org' % i],
            'cron': '%d %d * * *' % (slot.minute, slot.hour), 'timezone': 'UTC'}, now)
    slot_epoch = slot.replace(tzinfo=datetime.timezone.utc).timestamp()
    args = with_worker_type(system.consumer_args, worker_type)
    # Counted from before the consumer starts (its start in its CPU), unless
    # it is up and warm before the slot.
    system.sink.ask('reset')
    before = system.cpu([])
    started = time.time()
    with system.consumers(1, args, limit_env(system, limit, **room)) as procs:
        if real_slot:
            started = slot_epoch
            if time.time() < slot_epoch - 10:
                warm = system.post_run(WARM_UP)
                wait_for_runs(system, lambda: Run.select().where(Run.id == warm), 1, 5)
            if time.time() < slot_epoch - 1:
                before = system.cpu(procs)
            else:
                print('the consumer was not ready before the slot: its start counts',
                      flush=True)
        of_slot = Run.select().where(Run.schedule.is_null(False), Run.slot_at == slot)
        done = wait_for_runs(system, lambda: of_slot, count,
                             timeout + max(0.0, started - time.time()), quiet_until=started)
        after = system.cpu(procs)
    runs = list(of_slot)
    Schedule.delete().execute()
    problems = [] if len(runs) == count else ['%d of %d slot runs made' % (len(runs), count)]
    created = [r.created_at.replace(tzinfo=datetime.timezone.utc).timestamp() - started
               for r in runs]
    return outcome(system, 'due in one slot' + ('' if real_slot else ' (made due at once)'),
                   1, args, limit, count, started, runs, problems, done, before, after,
                   first_created_s=min(created, default=NAN),
                   created_s=max(created, default=NAN))


def outcome(system, kind, consumers, args, limit, count, started, runs, problems, done,
            before, after, posting_s=NAN, first_created_s=NAN, created_s=NAN):
    from vocab import RunStatus
    stats = system.sink.ask('stats')
    problems = problems + check(runs, stats)
    if not done:
        problems.insert(0, 'did not finish within the time limit')
    seconds = (stats['last_at'] - started) if stats['last_at'] else NAN
    delivered = sum(1 for r in runs if r.status == RunStatus.DELIVERED)
    worker_type = args[args.index('--worker-type') + 1] if '--worker-type' in args else 'thread'
    return Outcome(kind, consumers, worker_type, consumers * workers_of(args),
                   system.default_limit if limit is None else limit, count, seconds,
                   delivered / seconds if seconds > 0 else 0.0, posting_s, first_created_s,
                   created_s, delivered, problems,
                   {part: after[part] - before[part] for part in after})


def turn_check(system, runs, workers):
    """scripts/bench_burst.py's 30-run burst (its consumer, its measure), on
    a state database of its own, mailing to the same sink: (longest idle
    turn s, total s, longest wait s, delivered, problems)."""
    import bench_burst
    import demo
    from models import bind_database
    workdir = os.path.join(system.workdir, 'turns')
    os.makedirs(workdir, exist_ok=True)
    url = 'sqlite:///%s' % os.path.join(workdir, 'state.db')
    env = bench_burst.environment(workdir, url, system.redis.url, system.sink.port)
    shop = demo.open_shop(url)
    demo.seed(customers=CUSTOMERS, orders=200)
    shop.close()
    bind_database(url)
    import redis
    redis.Redis.from_url(system.redis.url).flushdb()
    system.sink.ask('reset')
    try:
        gap, total, wait, delivered = bench_burst.burst(env, ROOT, runs, workers, 1, system.log)
    finally:
        bind_database(system.database_url, create=False)
    stats = system.sink.ask('stats')
    problems = []
    if delivered < runs:
        problems.append('%d of %d runs delivered' % (delivered, runs))
    if stats['messages'] != runs or any(n > 1 for n in stats['keys'].values()):
        problems.append('the sink got %d messages for %d runs (%d distinct)'
                        % (stats['messages'], runs, len(stats['keys'])))
    return runs, gap, total, wait, delivered, problems


# -- the section ---------------------------------------------------------------

def burst_section(runs, workdir, postgres=False, smoke=False, timeout=None, rounds=1):
    """Every part in one run, each burst with consumers of its own;
    (Markdown lines, summary, problems). The slot bursts, the target's
    measure, `rounds` times, thread and process workers alternating: the
    tables show each one's round of median ratio (one burst alone swung by
    a fifth from run to run of the same code), and every round's problems.
    Each burst but --smoke's runs between two runs of the baseline
    (side_by_side), its ratio taken against them."""
    timeout = timeout or max(120, runs * 0.6)
    with contextlib.ExitStack() as cleanup:
        system = System(workdir, cleanup, postgres=postgres)
        workers = workers_of(system.consumer_args)
        outcomes = [posted_burst(system, runs, timeout=timeout)]
        show(outcomes[-1])
        # The baseline sends copies of a message a run of the burst sent.
        sample = system.sink.ask('sample')['sample']
        if sample and not smoke:
            # The first burst made the sample: its baseline comes after it.
            outcomes[0] = outcomes[0]._replace(baseline=baseline(
                system.sink, sample, runs, workers, workdir)[0])
        rates = {}
        for threads in sorted({workers, 2 * workers}) if sample else ():
            # The median of three: a burst of plain smtplib lasts under a
            # second, and one alone swung from 1,172 to 1,910 messages/s.
            tries = sorted((baseline(system.sink, sample, runs, threads, workdir)
                            for _ in range(BASELINE_TRIES)), key=lambda result: result[0])
            rates[threads] = tries[len(tries) // 2]
            print('plain smtplib, %d threads: %.0f messages/s (median of %s)'
                  % (threads, rates[threads][0], ', '.join('%.0f' % t[0] for t in tries)),
                  flush=True)
        # --smoke checks deliveries, not speed: no baselines beside its bursts.
        beside = None if smoke else sample
        slots = collections.defaultdict(list)
        for _ in range(rounds):
            for worker_type in ('thread', 'process'):
                slots[worker_type].append(side_by_side(
                    system, beside, runs, workers, lambda: slot_burst(
                        system, runs, real_slot=not smoke, timeout=timeout,
                        worker_type=worker_type)))
                show(slots[worker_type][-1])
        outcomes += [median_round(slots[worker_type], rates)
                     for worker_type in ('thread', 'process')]
        # Scale-out at the default per-report limit, then without it (0): one
        # report's runs can only fill more workers when the limit allows.
        for limit in (None, 0):
            for consumers, worker_type in ((1, 'thread'), (2, 'thread'), (1, 'process')):
                if limit is None and (consumers, worker_type) == (1, 'thread'):
                    continue  # the first burst
                outcomes.append(side_by_side(
                    system, beside, runs, consumers * workers, lambda: posted_burst(
                        system, runs, consumers, worker_type, limit, timeout=timeout)))
                show(outcomes[-1])
        turns = turn_check(system, 10 if smoke else 30, workers)
        print('%d-run turn check: %.3f s longest idle turn' % turns[:2], flush=True)
        far = far_server(system, sample, min(runs, FAR_RUNS), workers, timeout) \
            if sample and not smoke else None
        command = ' '.join(system.consumer_args)
    lines, summary, problems = render(outcomes, rates, turns, runs, workers, postgres, command)
    if rounds > 1:
        lines += ['', 'Due in one slot, %d rounds, thread and process workers alternating '
                  '(the tables show the round of median ratio): %s.' % (rounds, '; '.join(
                      '%s workers %s' % (worker_type, ', '.join(
                          '%.0f runs/s (%.3fx)' % (result.runs_per_s, ratio(result, rates))
                          for result in results))
                      for worker_type, results in slots.items())), '']
    if far is not None:
        lines += render_far(*far)
        problems += ['%s: %s' % (result.kind, p) for result in far[1] for p in result.problems]
    return lines, summary, problems


BASELINE_TRIES = 3


def side_by_side(system, sample, count, threads, burst):
    """burst() between two runs of the baseline with its number of threads;
    its result carries their mean messages/s, which its ratio is taken
    against. This machine's speed drifts by up to 2x within minutes (the
    smtplib baseline went from 986 to 1,863 messages/s between two runs of
    the bench), so a baseline measured minutes away says little."""
    if not sample:
        return burst()
    rates = [baseline(system.sink, sample, count, threads, system.workdir)[0]]
    result = burst()
    rates.append(baseline(system.sink, sample, count, threads, system.workdir)[0])
    return result._replace(baseline=sum(rates) / len(rates))


def ratio(result, rates):
    """Runs/s over the baseline measured beside the burst, else over the
    median baseline with as many threads."""
    base = result.baseline
    if base != base:  # NaN: none beside it
        base = rates.get(result.workers, (NAN,))[0]
    return result.runs_per_s / base


def median_round(results, rates=None):
    """The round of median ratio to the baseline (runs/s where there is
    none), carrying every round's problems: a run lost or sent twice in any
    round is reported, whichever round is shown."""
    def key(result):
        by_ratio = ratio(result, rates) if rates is not None else NAN
        # NaN (no baseline at all) would sort anywhere: runs/s then.
        return (0, by_ratio) if by_ratio == by_ratio else (1, result.runs_per_s)
    middle = sorted(results, key=key)[len(results) // 2]
    problems = ['round %d: %s' % (number, problem)
                for number, result in enumerate(results, 1) for problem in result.problems]
    return middle._replace(problems=problems if len(results) > 1 else middle.problems)


# A mail server further than loopback: each DATA answered this much later.
FAR_DELAY = 0.02
FAR_RUNS = 300


def far_server(system, sample, runs, workers, timeout):
    """The same burst when the mail server takes FAR_DELAY s to accept each
    message: the baseline, then batches mailed one run after another
    (batch_senders 1) and over the default connections at once."""
    system.sink.ask('delay %s' % FAR_DELAY)
    try:
        rate = baseline(system.sink, sample, runs, workers, system.workdir)[0]
        print('mail server %d ms away: plain smtplib, %d threads: %.0f messages/s'
              % (FAR_DELAY * 1000, workers, rate), flush=True)
        results = []
        for senders in (1, None):
            kind = 'posted at once, batch_senders %s' % (
                senders or '%d (default)' % system.settings().batch_senders)
            extra = {'NIGHTSHIFT_BATCH_SENDERS': str(senders)} if senders else {}
            results.append(posted_burst(system, runs, timeout=timeout, kind=kind, **extra))
            show(results[-1])
    finally:
        system.sink.ask('delay 0')
    return rate, results, runs, workers


def render_far(rate, results, runs, workers):
    lines = ['', '| %s runs, the mail server answering each DATA %d ms late | consumers x '
             'workers | delivered | first POST -> last delivery s | runs/s | ratio to smtplib '
             '(%d threads) | consumers, ms CPU per run |' % ('{:,}'.format(runs),
                                                            FAR_DELAY * 1000, workers),
             '|---|---|---|---|---|---|---|',
             '| plain smtplib, one reused connection per thread (baseline) | %d threads | '
             '%s/%s | %.2f | %.0f | 1.00x | - |' % (workers, runs, runs, runs / rate, rate)]
    for result in results:
        lines.append('| %s | %s | %d/%d | %.2f | %.0f | %.3fx | %.1f |' % (
            result.kind, _setup(result), result.delivered, runs, result.seconds,
            result.runs_per_s, result.runs_per_s / rate,
            1000 * result.cpu['consumers'] / max(result.delivered, 1)))
    return lines + ['']


def show(result):
    beside = result.baseline == result.baseline  # not NaN
    print('%s, %d x %s, max_concurrent_per_report %d: %d/%d delivered in %.2f s, '
          '%.0f runs/s%s%s' % (result.kind, result.consumers, result.worker_type, result.limit,
                               result.delivered, result.runs, result.seconds, result.runs_per_s,
                               '; smtplib beside it %.0f messages/s, %.3fx' % (
                                   result.baseline, result.runs_per_s / result.baseline)
                               if beside else '',
                               ('; ' + '; '.join(result.problems)) if result.problems else ''),
          flush=True)


def render(outcomes, rates, turns, runs, workers, postgres, command):
    n = '{:,}'.format(runs)
    lines = ['| burst of %s runs (`%s`, %d rows, one recipient each) | consumers x workers '
             '| max_concurrent_per_report | delivered | slot or first POST -> last delivery s '
             '| runs/s | smtplib beside it, messages/s | ratio to smtplib (same threads) '
             '| problems |' % (n, REPORT, CUSTOMERS),
             '|---|---|---|---|---|---|---|---|---|']
    for threads, (rate, _, _, size) in sorted(rates.items()):
        lines.append('| plain smtplib: %s prebuilt copies of a run\'s message (%s bytes), one '
                     'reused connection per thread (baseline, median of %d) | %d threads | - '
                     '| %s/%s | %.2f | %s | - | 1.00x | |'
                     % (n, '{:,}'.format(size), BASELINE_TRIES, threads, n, n, runs / rate,
                        '{:,.0f}'.format(rate)))
    problems = []
    for result in outcomes:
        problems += ['%s, %d x %s: %s' % (result.kind, result.consumers, result.worker_type, p)
                     for p in result.problems]
        lines.append('| %s | %s | %s | %s/%s | %.2f | %.0f | %s | %.3fx | %s |' % (
            result.kind, _setup(result), _limit(result.limit), '{:,}'.format(result.delivered),
            n, result.seconds, result.runs_per_s,
            '-' if result.baseline != result.baseline else '{:,.0f}'.format(result.baseline),
            ratio(result, rates), '; '.join(result.problems) or 'none'))
    lines += ['', '| burst | CPU s: consumers | consumers, ms per run | consumers, cores busy '
              '| web server | SMTP sink | redis-server | bench (clients, polling) |',
              '|---|---|---|---|---|---|---|---|']
    for result in outcomes:
        cpu = result.cpu
        lines.append('| %s, %s, limit %s | %.2f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f |' % (
            result.kind, _setup(result), _limit(result.limit), cpu['consumers'],
            1000 * cpu['consumers'] / max(result.delivered, 1),
            cpu['consumers'] / result.seconds if result.seconds > 0 else NAN,
            cpu['web server'], cpu['sink'], cpu['redis-server'],
            cpu['bench (clients, polling)']))
    for threads, (rate, cpu, sink_cpu, _) in sorted(rates.items()):
        lines.append('| plain smtplib, %d threads | %.2f (the sender) | %.1f | %.2f | - | %.2f '
                     '| - | - |' % (threads, cpu, 1000 * cpu / runs, cpu * rate / runs, sink_cpu))
    turn_runs, gap, total, wait, delivered, turn_problems = turns
    problems += ['%d-run turn check: %s' % (turn_runs, p) for p in turn_problems]
    posted = outcomes[0]
    lines += ['', 'Consumers: `huey_consumer tasks.huey %s` (the Procfile\'s `worker:` line; '
              '`process` rows swap the worker type), started afresh for each burst and warmed '
              'by one run. Runs/s counts delivered runs; CPU is utime+stime from /proc of each '
              'process (a consumer with its worker processes) over the burst.' % command,
              '',
              'Posted at once: %s POSTs to `/api/runs` from %d keep-alive client threads took '
              '%.2f s; the clock runs from the first POST to the sink\'s last accepted message.'
              % (n, CLIENT_THREADS, posted.posting_s)]
    for result in outcomes:
        if result.kind.startswith('due in one slot') and result.worker_type == 'thread':
            lines.append('Due in one slot: %s schedules, cron on the slot\'s minute, '
                         '`max_schedules` and `max_runs_per_tick` raised to %s where their '
                         'defaults are lower (200 and 100: no bigger slot, and a slot of over '
                         '100 runs spread over ticks); the tick made their runs %.2f-%.2f s '
                         'after the %s, the clock runs from it to the last delivery.'
                         % (n, n, result.first_created_s, result.created_s,
                            'slot' if 'made due' not in result.kind else 'consumer started'))
    lines.append('No idle waiting (scripts/bench_burst.py\'s measure): %d runs of one report '
                 'queued at once, `max_concurrent_per_report` at its default, 1 x `-w %d -k '
                 'thread`, its own SQLite state database: longest idle turn %.3f s, all '
                 'ended after %.2f s, longest wait to start %.2f s, %d delivered.'
                 % (turn_runs, workers, gap, total, wait, delivered)
                 if not turn_problems else 'No idle waiting: %s.' % '; '.join(turn_problems))
    lines.append('State database: %s; Redis on loopback; each run checked delivered once in the '
                 'database and its Message-ID and recipient once at the sink.'
                 % ('PostgreSQL' if postgres else 'SQLite'))
    summary = {'posted_ratio': ratio(posted, rates),
               'longest_idle_turn': gap}
    return lines, summary, problems


def _setup(result):
    return '%d x %d %s' % (result.consumers, result.workers // result.consumers,
                          result.worker_type)


def _limit(limit):
    return '%d%s' % (limit, ' (none)' if limit == 0 else '')


def main():
    if sys.argv[1:2] == ['--sink']:
        return sink_main()
    if sys.argv[1:2] == ['--baseline']:
        port, count, threads, path = sys.argv[2:6]
        return baseline_main(int(port), int(count), int(threads), path)
    print('run it through scripts/bench.py --burst-only', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
