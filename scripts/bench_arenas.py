"""What a web server keeps after serving big downloads, with and without a
limit on glibc's malloc arenas (issue 16, memory note).

Each waitress thread that streams a download gets its own malloc arena, and
glibc keeps an arena's pages after the download ends. This starts server.py
on a demo shop of --rows orders, streams the orders report --downloads
times (--parallel at once, so several threads serve), and reads the server's
resident size before and after: with glibc's default arenas
(`malloc_arenas = 0`) and with Nightshift's limit (memlimits.py).

    .venv/bin/python scripts/bench_arenas.py --rows 300000 --downloads 8
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'scripts'), os.path.join(ROOT, 'tests'), ROOT]

import bench  # noqa: E402
from loopback import free_port, wait_until  # noqa: E402


def resident_mb(pid):
    with open('/proc/%d/status' % pid) as status:
        fields = dict(line.split(':', 1) for line in status if ':' in line)
    return int(fields['VmRSS'].split()[0]) / 1024.0, int(fields['VmHWM'].split()[0]) / 1024.0


def measure(source_url, workdir, downloads, parallel, arenas):
    port = free_port()
    env = bench.server_env(workdir, 'arenas-%s' % (arenas or 'default'), source_url)
    env.pop('MALLOC_ARENA_MAX', None)
    env['NIGHTSHIFT_MALLOC_ARENAS'] = str(arenas)
    server = subprocess.Popen([sys.executable, 'server.py', '--port', str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = 'http://127.0.0.1:%d' % port
    try:
        wait_until(lambda: bench._answers(base + '/healthz'), timeout=60, message='server')
        before = resident_mb(server.pid)[0]
        started = time.perf_counter()
        left = list(range(downloads))
        lock = threading.Lock()

        def fetch():
            while True:
                with lock:
                    if not left:
                        return
                    left.pop()
                with urllib.request.urlopen(base + '/reports/orders.csv', timeout=900) as res:
                    while res.read(1 << 20):
                        pass
        threads = [threading.Thread(target=fetch) for _ in range(parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        time.sleep(1)
        after, peak = resident_mb(server.pid)
    finally:
        server.terminate()
        server.wait(20)
    return before, after, peak, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rows', type=int, default=300000)
    parser.add_argument('--downloads', type=int, default=8)
    parser.add_argument('--parallel', type=int, default=2,
                        help='downloads at once (the download_slots default is 2)')
    parser.add_argument('--arenas', type=int, default=1, help='the malloc_arenas to compare')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        url = bench.make_sqlite(os.path.join(workdir, 'shop.db'), args.rows)
        print('| malloc_arenas | RSS before MB | RSS after %d downloads MB | peak MB | '
              'seconds |' % args.downloads)
        print('|---|---|---|---|---|')
        for arenas in (0, args.arenas):
            before, after, peak, seconds = measure(url, workdir, args.downloads, args.parallel,
                                                   arenas)
            print('| %s | %.0f | %.0f | %.0f | %.1f |' % (arenas or "0 (glibc's default)",
                                                        before, after, peak, seconds))


if __name__ == '__main__':
    main()
