#!/usr/bin/env python3
"""Break one promise at a time and check that a test notices.

Each mutant is a piece of source text and what to put in its place. The
repository is copied to a temporary folder once; each mutant is applied to
the copy, the tests named for it run there (`pytest -x -q`), and the file is
put back. A mutant is "killed" when its tests fail and "survived" when they
pass. Mutants are found by their text, not by line numbers, so when code
moves to another module the mutant follows it; when the text is gone (or is
no longer unique) it is reported as not applicable rather than guessed at.

    .venv/bin/python scripts/mutate.py            # every mutant
    .venv/bin/python scripts/mutate.py reaper     # those whose name has "reaper"
    .venv/bin/python scripts/mutate.py --list

Exit status 1 when a mutant survived (or the tests fail unmutated).
"""
import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMISES = 'tests/test_promises.py'


class Mutant(NamedTuple):
    name: str
    files: tuple      # where the text is expected; other modules are searched too
    find: str
    replace: str
    why: str          # the promise it breaks
    tests: tuple      # pytest node ids (or files) that must catch it


def promise(test):
    return '%s::%s' % (PROMISES, test)


MUTANTS = [
    Mutant('download-escape-default', ('server.py', 'api.py'),
           "escape=options.get('escape_formulas',\n"
           "                                                       definition.escape_formulas)",
           "escape=options.get('escape_formulas', False)",
           'downloads at /reports/<name>.csv escape formulas by default',
           (promise('test_a_download_escapes_formulas_by_default'),)),
    Mutant('run-escape-default', ('runs.py',),
           'escape_formulas=definition.escape_formulas\n'
           '                         if escape_formulas is None else escape_formulas',
           'escape_formulas=False if escape_formulas is None else escape_formulas',
           'emailed runs escape formulas by default',
           (promise('test_a_run_escapes_formulas_by_default'),)),
    Mutant('link-not-bound-to-run', ('links.py',),
           "message = ('%d\\n%s\\n%d' % (run_id, file_key, expires)).encode()",
           "message = ('%d' % expires).encode()",
           'a signed link opens only its own run\'s file',
           (promise('test_a_signed_link_opens_only_its_own_runs_file'),)),
    Mutant('consumer-no-redaction', ('tasks.py',),
           'def start_worker():\n            install_log_redaction(settings)',
           'def start_worker():\n            pass',
           'a starting consumer installs log redaction',
           (promise('test_a_starting_consumer_redacts_secrets_from_logs'),)),
    Mutant('server-no-redaction', ('server.py', 'cli.py'),
           '    install_log_redaction(settings)\n    logger.info(',
           '    logger.info(',
           'the web server installs log redaction',
           (promise('test_the_web_server_redacts_secrets_from_logs'),)),
    Mutant('retry-rebuilds-file', ('runs.py', 'runfiles.py'),
           'reused = _published_copy(settings, store, run)',
           'reused = None',
           'a retry mails the file already built',
           (promise('test_a_retry_mails_the_file_already_built_not_a_new_one'),)),
    Mutant('edit-timing-catches-up', ('schedules.py',),
           '# New timing counts from now: no catching up slots of the new cron.\n'
           '        schedule.checked_through = max(schedule.checked_through, now)',
           'pass',
           'editing a schedule\'s timing does not catch up old slots',
           (promise('test_editing_a_schedules_timing_does_not_catch_up_slots_of_the_new_'
                    'timing'),)),
    Mutant('resync-timing-catches-up', ('schedules.py',),
           "fields['checked_through'] = max(existing.checked_through, now)",
           'pass',
           're-syncing a changed config schedule does not catch up old slots',
           (promise('test_resyncing_a_changed_config_schedule_does_not_catch_up_slots_of_'
                    'the_new_timing'),)),
    Mutant('smtp-connect-5xx-temporary', ('mail.py',),
           'temporary=not 500 <= exc.smtp_code < 600)',
           'temporary=True)',
           'a 5xx reply while connecting is final (only 535 was)',
           (promise('test_smtp_5xx_replies_are_final_and_4xx_replies_are_temporary'),)),
    Mutant('smtp-sender-5xx-temporary', ('mail.py',),
           'temporary=not 500 <= code < 600)',
           'temporary=True)',
           'a 5xx reply to MAIL FROM is final',
           (promise('test_smtp_5xx_replies_are_final_and_4xx_replies_are_temporary'),)),
    Mutant('smtp-recipient-5xx-pending', ('runs.py', 'delivery.py'),
           "delivery.status = DeliveryStatus.REFUSED if reply.startswith('5') \\\n"
           "            else DeliveryStatus.PENDING",
           "delivery.status = DeliveryStatus.PENDING",
           'a recipient refused with 5xx is refused, not retried',
           (promise('test_each_recipient_is_sent_only_on_2xx_refused_on_5xx_retried_on_4xx'),)),
    Mutant('sent-without-2xx', ('runs.py', 'delivery.py'),
           "if reply.startswith('2'):",
           "if not reply.startswith('5'):",
           'a recipient is sent only on a 2xx reply',
           (promise('test_each_recipient_is_sent_only_on_2xx_refused_on_5xx_retried_on_4xx'),)),
    Mutant('no-sending-mark', ('runs.py', 'delivery.py'),
           "statements.update(Delivery, {'status': DeliveryStatus.SENDING}, ('id', 'in', ids))",
           'pass',
           'recipients are marked sending before the SMTP transaction',
           (promise('test_recipients_are_marked_sending_before_the_smtp_transaction'),)),
    Mutant('reaper-no-compare-and-set', ('runs.py',),
           ".where(Run.id == run.id, Run.status == RunStatus.RUNNING,\n"
           "                        Run.attempts == run.attempts,\n"
           "                        Run.heartbeat_at == run.heartbeat_at)",
           '.where(Run.id == run.id)',
           'two reapers at once queue a lost run once',
           (promise('test_two_reapers_at_once_queue_a_lost_run_once'),)),
    Mutant('failure-overwrites-delivered', ('runs.py',),
           '.where(Run.id == run_id, Run.status.not_in(FINAL)).execute())',
           '.where(Run.id == run_id).execute())',
           'a delivered run is never marked failed afterwards',
           (promise('test_a_delivered_run_is_never_marked_failed_afterwards'),)),
    Mutant('attempt-fence-dropped', ('runs.py',),
           'if not statements.update(Run, values, *self._fence()):',
           "if not statements.update(Run, values, ('id', '=', self.run_id)):",
           'an attempt taken back can no longer write to its run',
           (promise('test_an_attempt_taken_back_can_no_longer_write_to_its_run'),)),
    Mutant('batch-fence-dropped', ('runs.py',),
           "return fence if self.batch_of is None else fence + (('batch_of', '=', self.batch_of),)",
           'return fence',
           'a sender of a batch given back cannot write to a run claimed anew',
           ('tests/test_batches.py::test_a_batch_given_back_starts_no_more_runs_and_its_stale_'
            'claims_are_fenced',)),
    Mutant('recipients-not-deduplicated', ('runs.py',),
           'if address.lower() not in (a.lower() for a in seen):\n'
           '            seen.append(address)',
           'seen.append(address)',
           'a recipient given twice gets one copy',
           (promise('test_a_recipient_given_twice_gets_one_copy'),)),
    Mutant('max-recipients-refused', ('runs.py',),
           'if len(to) > settings.max_recipients:',
           'if len(to) >= settings.max_recipients:',
           'exactly max_recipients recipients are accepted',
           (promise('test_exactly_max_recipients_are_accepted_and_one_more_refused'),)),
    Mutant('file-store-path-guard', ('filestore.py',),
           "if key.startswith(('/', '\\\\')) or '..' in key.split('/'):",
           'if False:',
           'the local file store keeps to its folder',
           (promise('test_the_file_store_refuses_keys_that_leave_its_folder'),)),
    Mutant('postgres-source-writable', ('sources.py',),
           'conn.read_only = True',
           'conn.read_only = False',
           'a PostgreSQL source refuses writes',
           (promise('test_a_postgresql_source_refuses_writes'),)),
    Mutant('parameters-pasted', ('sqlfiles.py',),
           "out.append('CAST(%%(%s)s AS %s)' % (placeholder.name, "
           "PG_CASTS[kinds[placeholder.name]]))",
           "out.append(\"'%s'\" % values[placeholder.name])",
           'report parameters are bound, never pasted into the SQL',
           (promise('test_report_parameters_are_bound_never_pasted_into_the_sql'),)),
]


def copy_repository(target):
    ignore = shutil.ignore_patterns('.git', '.venv', '__pycache__', '.pytest_cache', 'var',
                                    'node_modules', '*.pyc')
    shutil.copytree(ROOT, target, ignore=ignore)


def locate(root, mutant):
    """(relative path, its text) holding the mutant's text exactly once, or
    (None, why not)."""
    candidates = list(mutant.files) + sorted(
        os.path.relpath(p, root) for p in glob.glob(os.path.join(root, '*.py')))
    seen = set()
    for name in candidates:
        path = os.path.join(root, name)
        if name in seen or not os.path.isfile(path):
            continue
        seen.add(name)
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
        count = text.count(mutant.find)
        if count == 1:
            return name, text
        if count > 1:
            return None, 'not applicable (text found %d times in %s)' % (count, name)
    return None, 'not applicable (text not found)'


def run_tests(root, tests, timeout, extra=(), show=False):
    present = [t for t in tests if os.path.exists(os.path.join(root, t.split('::')[0]))]
    if not present:
        return None
    command = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
               '-p', 'no:randomly'] + list(extra) + present
    try:
        done = subprocess.run(command, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 'timeout'
    if show:
        # Enough to see that a test failed on the promise, not on a typo.
        lines = done.stdout.decode('utf-8', 'replace').splitlines()
        print('\n'.join('    ' + line for line in lines if line.startswith(('E ', 'FAILED')))
              or '    (no failure)')
    # 0: all passed; 5: nothing collected (the test is gone); else failed.
    return {0: 'passed', 5: 'no tests'}.get(done.returncode, 'failed')


def try_mutant(root, mutant, timeout, against=None, extra=(), show=False):
    name, text = locate(root, mutant)
    if name is None:
        return text, 0.0, None
    path = os.path.join(root, name)
    started = time.monotonic()
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(text.replace(mutant.find, mutant.replace))
    try:
        result = run_tests(root, against or mutant.tests, timeout, extra, show)
    finally:
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)
    seconds = time.monotonic() - started
    verdict = {'failed': 'killed', 'timeout': 'killed (timeout)', 'passed': 'survived',
               'no tests': 'not applicable (tests not found)',
               None: 'not applicable (tests not found)'}[result]
    return verdict, seconds, name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('only', nargs='*', help='run only mutants whose name contains one')
    parser.add_argument('--list', action='store_true', help='list the mutants and stop')
    parser.add_argument('--timeout', type=float, default=600,
                        help='seconds one mutant\'s tests may take (default 600)')
    parser.add_argument('--no-baseline', action='store_true',
                        help='skip checking that the tests pass on the unchanged code')
    parser.add_argument('--against', nargs='+', metavar='TEST',
                        help='run these tests for every mutant instead of its own (e.g. the '
                             'rest of the suite, to see what it misses)')
    parser.add_argument('-m', dest='marks', help='pytest -m expression, e.g. "not slow"')
    parser.add_argument('--show', action='store_true',
                        help='print the failing assertions of each mutant')
    args = parser.parse_args(argv)
    extra = ('-m', args.marks) if args.marks else ()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for m in chosen:
            print('%-30s %s' % (m.name, m.why))
        return 0
    with tempfile.TemporaryDirectory(prefix='nightshift-mutants-') as tmp:
        root = os.path.join(tmp, 'repo')
        copy_repository(root)
        if not args.no_baseline:
            tests = args.against or sorted({t for m in chosen for t in m.tests})
            baseline = run_tests(root, tests, args.timeout * 2, extra)
            if baseline != 'passed':
                print('the tests do not pass on the unchanged code (%s): a mutant run would '
                      'mean nothing' % baseline)
                return 1
        rows = []
        for mutant in chosen:
            verdict, seconds, where = try_mutant(root, mutant, args.timeout, args.against,
                                                 extra, args.show)
            rows.append((mutant.name, where or '-', verdict, seconds))
            print('%-30s %-14s %-34s %6.1fs' % rows[-1], flush=True)
    killed = sum(r[2].startswith('killed') for r in rows)
    survived = [r[0] for r in rows if r[2] == 'survived']
    skipped = [r[0] for r in rows if r[2].startswith('not applicable')]
    print()
    print('| mutant | file | result | seconds |')
    print('|---|---|---|---|')
    for name, where, verdict, seconds in rows:
        print('| %s | %s | %s | %.1f |' % (name, where, verdict, seconds))
    print()
    print('%d mutants, %d killed, %d survived, %d not applicable'
          % (len(rows), killed, len(survived), len(skipped)))
    if survived:
        print('survived: %s' % ', '.join(survived))
    return 1 if survived else 0


if __name__ == '__main__':
    sys.exit(main())
