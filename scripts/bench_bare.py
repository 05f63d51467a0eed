"""The baseline for /healthz in scripts/bench.py: a bare Bottle route on the
same waitress settings as server.py.   python scripts/bench_bare.py PORT THREADS"""
import sys

import waitress
from bottle import Bottle

app = Bottle()


@app.get('/healthz')
def healthz():
    return {'status': 'ok'}


if __name__ == '__main__':
    waitress.serve(app, host='127.0.0.1', port=int(sys.argv[1]), threads=int(sys.argv[2]),
                   _quiet=True)
