"""scripts/export.py and scripts/seed.py as a user runs them."""
import os
import subprocess
import sys

import demo
from conftest import ROOT, attachment
from models import Run


def run_script(args, env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_export_to_file_matches_the_download(app, consumer_env, tmp_path):
    demo.seed(customers=20, orders=700)
    out = tmp_path / 'paid.csv'
    done = run_script(['scripts/export.py', 'orders', '-p', 'status=paid', '-o', str(out)],
                      consumer_env)
    assert done.returncode == 0, done.stderr
    assert 'rows' in done.stdout
    downloaded = app.get('/reports/orders.csv', {'status': 'paid'}).body
    assert out.read_bytes() == downloaded


def test_export_by_email_is_recorded_as_a_cli_run(consumer_env, smtp_sink):
    demo.seed(customers=20, orders=100)
    done = run_script(['scripts/export.py', 'customers', '--to', 'boss@example.org'],
                      consumer_env)
    assert done.returncode == 0, done.stderr
    [sent] = smtp_sink.messages
    name, data = attachment(sent['message'])
    assert name.startswith('customers-') and data.count(b'\n') == 21
    [run] = Run.select()
    assert (run.trigger, run.status, run.rows) == ('cli', 'delivered', 20)


def test_export_bad_input_says_what_is_wrong(consumer_env):
    done = run_script(['scripts/export.py', 'orders', '-p', 'since=soon', '-o', 'x.csv'],
                      consumer_env)
    assert done.returncode != 0 and 'params.since' in done.stderr
    done = run_script(['scripts/export.py', 'nope', '-o', 'x.csv'], consumer_env)
    assert done.returncode != 0 and "no report named 'nope'" in done.stderr
    assert Run.select().count() == 0
