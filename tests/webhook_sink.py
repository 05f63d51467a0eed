"""A webhook receiver on loopback for the tests: a real HTTP server in a
thread that checks each POST's signature and timestamp as a receiver should
(webhooks.verify), keeps what arrived, and can answer with faults."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from loopback import wait_until


class WebhookSink:
    """`replies`: statuses the next POSTs get in turn (then 200); `delay`:
    seconds to wait before answering."""

    def __init__(self, secret=None):
        self.secret = secret
        self.received = []
        self.replies = []
        self.delay = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                sink._keep(self.path, dict(self.headers), body)
                if sink.delay:
                    time.sleep(sink.delay)
                with sink._lock:
                    status = sink.replies.pop(0) if sink.replies else 200
                self.send_response(status)
                self.send_header('Content-Length', '2')
                self.end_headers()
                self.wfile.write(b'ok')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path='/hook/T000/B000/secret-part'):
        return 'http://127.0.0.1:%d%s' % (self.port, path)

    def _keep(self, path, headers, body):
        import webhooks
        stamp = headers.get(webhooks.TIMESTAMP_HEADER)
        signature = headers.get(webhooks.SIGNATURE_HEADER)
        verified = None
        if self.secret is not None:
            verified = webhooks.verify(self.secret, stamp, body, signature, now=time.time())
        with self._lock:
            self.received.append({'path': path, 'headers': headers, 'body': body,
                                  'json': json.loads(body), 'verified': verified,
                                  'at': time.time()})

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count, timeout=15.0):
        wait_until(lambda: len(self.received) >= count, timeout,
                   message='%d POST(s) at the webhook sink' % count)
        return self.received
