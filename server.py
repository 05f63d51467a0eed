"""HTTP: a Bottle app built from settings, served by waitress.

    python server.py [--host H] [--port P] [--worker]

`--worker` also runs a Huey consumer (threads) in the same process, so one
command runs the whole system on one machine. The routes are api.py's and
web.py's, the plugins guarding them guards.py's.
"""
import argparse
import errno
import ipaddress
import logging
import os
import signal
import sys
import threading

from bottle import Bottle

import guards
from api import install_api
from logformat import install_logging
from memlimits import limit_malloc_arenas
from metrics import install_metrics
from migrations import SchemaBehind
from models import bind_database
from settings import SettingsError, install_log_redaction, load_settings
from tasks import Jobs
from web import install_pages

logger = logging.getLogger('nightshift.server')


def create_app(settings, jobs, registry=None):
    registry = registry or jobs.registry
    app = Bottle()
    # Installed first, so the JSON error handler wraps the guards too.
    app.install(guards.JsonErrors(jobs.database))
    app.install(guards.header_bytes)
    app.install(guards.TokenAuth(settings.tokens))
    app.install(guards.BrowserGuard(settings.tokens, settings.public_url))
    app.default_error_handler = guards.bottle_errors
    app.add_hook('after_request', guards.protective_headers)
    install_api(app, settings, jobs, registry)
    install_pages(app, settings, jobs, registry)
    install_metrics(app, settings, registry)
    return app


def _parse_args(argv):
    parser = argparse.ArgumentParser(description='Nightshift web server')
    parser.add_argument('--host', help='address to bind (default from settings)')
    parser.add_argument('--port', type=int, help='port (default from settings / PORT)')
    parser.add_argument('--worker', action='store_true',
                        help='also run a Huey consumer in this process')
    parser.add_argument('--config', help='config file (default config.ini or NIGHTSHIFT_CONFIG)')
    return parser.parse_args(argv)


def is_loopback(host):
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False


def check_exposure(host, settings):
    """Like Redis's protected mode: no token, no listening beyond loopback."""
    if not settings.tokens and not is_loopback(host):
        raise SettingsError(
            'refusing to listen on %s without an API token: anyone who can reach it could '
            'read your data and send mail through it. Set NIGHTSHIFT_API_TOKEN (e.g. '
            'export NIGHTSHIFT_API_TOKEN=$(python -c "import secrets; '
            'print(secrets.token_urlsafe())")), or listen on 127.0.0.1.' % host)


BODY_MARGIN = 64 * 1024


def server_options(settings, host, port):
    """waitress's options: what main() serves with, and the tests too."""
    # A streamed report can be written faster than the client reads it;
    # waitress then buffers up to 16 MB a connection by default. 2 MB keeps
    # the web server's memory flat whatever the report's size.
    #
    # Bodies: waitress would read (and spool to disk) up to 1 GiB before the
    # app could say 401 or 413. Ours are small JSON, so it refuses anything
    # past max_body_bytes (plus room for the app's own, clearer 413) from the
    # Content-Length, or as soon as a chunked body passes it.
    #
    # Connections: reading is asynchronous, so a slow client costs a socket,
    # not a thread; poll() is not limited to 1024 descriptors as select() is,
    # and idle ones are dropped after a minute.
    return dict(host=host, port=port, threads=settings.web_threads,
                outbuf_high_watermark=2 * 1024 * 1024,
                max_request_body_size=settings.max_body_bytes + BODY_MARGIN,
                connection_limit=settings.web_connections, asyncore_use_poll=True,
                channel_timeout=60, cleanup_interval=10)


def main(argv=None):
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    # The command line outranks the environment: given as environment, it
    # also moves what follows the port (the default public_url).
    environ = dict(os.environ)
    if args.host:
        environ['NIGHTSHIFT_HOST'] = args.host
    if args.port is not None:
        environ['PORT'] = str(args.port)
    try:
        settings = load_settings(args.config, environ=environ)
    except SettingsError as exc:
        sys.exit('nightshift: bad settings: %s' % exc)
    host, port = settings.host, settings.port
    try:
        check_exposure(host, settings)
    except SettingsError as exc:
        sys.exit('nightshift: %s' % exc)
    install_log_redaction(settings)
    install_logging(settings)
    logger.info('settings: %s', settings.describe())
    # Before any thread allocates (memlimits.py says why).
    limit_malloc_arenas(settings.malloc_arenas)

    from waitress.server import create_server

    try:
        jobs = Jobs(settings)
    except SettingsError as exc:
        sys.exit('nightshift: bad settings: %s' % exc)
    try:
        bind_database(settings.database_url, auto=settings.auto_migrate)
    except SchemaBehind as exc:
        sys.exit('nightshift: %s' % exc)
    app = create_app(settings, jobs)
    try:
        server = create_server(app, **server_options(settings, host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sys.exit('nightshift: port %d is in use on %s; stop what is listening there or '
                 'give another with --port or PORT' % (port, host))
    if not args.worker:
        # SIGINT stops the server (KeyboardInterrupt ends waitress's loop),
        # however it was started: a shell without job control starts
        # `python server.py &` with SIGINT ignored, and Python keeps that.
        # The consumer below sets its own, as huey_consumer does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        server.print_listen('Serving on http://{}:{}')
        server.run()
        return
    web = threading.Thread(target=server.run, name='waitress', daemon=True)
    web.start()
    logger.info('serving on http://%s:%d with %d consumer threads', host, port,
                settings.workers)
    consumer = jobs.huey.create_consumer(workers=settings.workers, worker_type='thread')
    try:
        consumer.run()  # main thread: SIGINT stops it gracefully
    finally:
        server.close()


if __name__ == '__main__':
    main()
