"""Mail delivery: compose a report message and hand it to a backend.

Both backends build the message with yagmail, so what lands in the outbox
is what an SMTP server would receive.
"""
import datetime
import os
import re
import smtplib
import socket
import uuid
from typing import NamedTuple

import yagmail

MAX_ADDRESS_LENGTH = 254
# RFC 5321 4.5.3.1.1; longer local parts are a sign of abuse, not of a person.
MAX_LOCAL_LENGTH = 64
# `%` and `!` route mail onwards from the named host (a%b@relay, relay!b):
# allowed_domains would check the relay, not where the mail really goes.
SOURCE_ROUTING = '%!'
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r'[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
_ADDRESS = re.compile(r'(%s)@(%s(\.%s)+)\Z' % (_LOCAL, _LABEL, _LABEL))
_SENDER = re.compile(r'(%s)@(%s(\.%s)*)\Z' % (_LOCAL, _LABEL, _LABEL))


class MailError(Exception):
    """Delivery failed. `temporary` says whether trying later may help."""

    def __init__(self, message, temporary):
        super().__init__(message)
        self.temporary = temporary


def check_address(address, single_label_domain=False):
    """Return the address if it is exactly one plain ASCII address, else
    raise ValueError saying what is wrong. No display names, no lists, no
    source routing. `single_label_domain` lets a sender such as
    nightshift@localhost through; recipients always need a dotted domain."""
    if not isinstance(address, str):
        raise ValueError('must be a string')
    if any(c in address for c in '\r\n\x00'):
        raise ValueError('must not contain line breaks or NUL')
    if not address.isascii():
        raise ValueError('must be a plain ASCII address (no look-alike characters)')
    if len(address) > MAX_ADDRESS_LENGTH:
        raise ValueError('is longer than %d characters' % MAX_ADDRESS_LENGTH)
    pattern = _SENDER if single_label_domain else _ADDRESS
    if not pattern.match(address):
        raise ValueError('%r is not a single email address like name@example.org' % address)
    local = address.rsplit('@', 1)[0]
    if len(local) > MAX_LOCAL_LENGTH:
        raise ValueError('the part before @ is longer than %d characters' % MAX_LOCAL_LENGTH)
    if any(c in local for c in SOURCE_ROUTING):
        raise ValueError('%r routes mail through another host (%% or ! before the @); '
                         'give the final address' % address)
    return address


class Mail(NamedTuple):
    to: list
    subject: str
    body: str
    attachment: str
    message_id: str


def human_size(n):
    """Decimal units, as the size settings (zip_over_mb, mail_max_mb) count."""
    if n is None:
        return '-'
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
        n /= 1000.0


def compose(run, title, to, path, seconds, link=None, link_expires=None, limit_mb=None,
            cut_at=None):
    """The message for a finished run; `to` is who still needs it. With a
    `link` the file is not attached and the body says why."""
    params = ', '.join('%s=%s' % (k, v) for k, v in sorted(run.params.items())
                       if v not in (None, '')) or 'none'
    name = os.path.basename(path)
    lines = [
        '%s report' % title,
        '',
        'Parameters: %s' % params,
        'Rows: {:,}'.format(run.rows),
        'Size: %s' % human_size(run.bytes),
        'Took: %.1f s' % seconds,
    ]
    if cut_at:
        lines.insert(4, 'NOTE: this report was cut at {:,} rows (the max_rows limit); '
                        'the data has more.'.format(cut_at))
    if link:
        size = os.path.getsize(path)
        # Providers count the message after base64 (4 bytes per 3, CRLF every
        # 76): say so, or "372.8 KB is over 0.5 MB" reads as a mistake.
        encoded = -(-size // 3) * 4
        encoded += -(-encoded // 76) * 2
        lines += [
            'File: %s is %s: too large to attach. As an attachment it would take '
            '%s after base64 encoding, plus headers, over the mail provider\'s %g MB '
            'limit.' % (name, human_size(size), human_size(encoded), limit_mb),
            'Download it here until %s UTC:' % link_expires.strftime('%Y-%m-%d %H:%M'),
            link,
        ]
    else:
        zipped = ' (zipped)' if name.endswith('.zip') else ''
        lines.append('File: %s, attached%s' % (name, zipped))
    lines += ['', 'Run #%d, sent by Nightshift.' % run.id]
    subject = 'Nightshift: %s report ({:,} rows{})'.format(
        run.rows, ', cut' if cut_at else '') % title
    # Titles come from code, but a header must never carry a line break.
    subject = ' '.join(subject.split())
    return Mail(list(to), subject, '\n'.join(lines), None if link else path, run.message_id)


class _Client(yagmail.SMTP):
    """yagmail logs in with the sender address; providers often want another
    login (SendGrid: "apikey"), so the login user is kept apart."""

    def __init__(self, login_user, **kwargs):
        self.login_user = login_user
        super().__init__(**kwargs)

    def _login(self, password):
        self.smtp = self.connection(self.host, self.port, **self.kwargs)
        if self.starttls:
            self.smtp.ehlo()
            self.smtp.starttls()
            self.smtp.ehlo()
        self.is_closed = False
        if self.login_user:
            self.smtp.login(self.login_user, password)


def _client(settings):
    ssl = settings.smtp_security == 'ssl'
    return _Client(
        login_user=settings.smtp_user,
        user=settings.mail_from,
        # Always explicit: a None password makes yagmail prompt on a terminal.
        password=settings.smtp_password or '',
        host=settings.smtp_host or 'localhost',
        port=settings.smtp_port,
        smtp_ssl=ssl,
        smtp_starttls=settings.smtp_security == 'starttls',
        smtp_skip_login=True,
        soft_email_validation=False,
        timeout=settings.smtp_timeout,
    )


def _message_args(mail):
    # One content per line: yagmail joins them with newlines in the text part
    # (a single string would get <br> in it). raw(): a line that happens to
    # name a file must not become an attachment.
    lines = [yagmail.raw(line) for line in mail.body.split('\n')]
    return dict(to=mail.to, subject=mail.subject, contents=lines,
                attachments=[mail.attachment] if mail.attachment else None,
                message_id=mail.message_id, prettify_html=False)


class OutboxMailer:
    """Development backend: each message becomes an .eml file in a folder."""

    def __init__(self, settings):
        self.folder = settings.outbox_dir
        self.settings = settings

    def send(self, mail):
        os.makedirs(self.folder, exist_ok=True)
        _, text = _client(self.settings).prepare_send(**_message_args(mail))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
        name = '%s-%s.eml' % (stamp, uuid.uuid4().hex[:8])
        tmp = os.path.join(self.folder, '.' + name)
        with open(tmp, 'w', encoding='utf-8') as out:
            out.write(text)
        os.replace(tmp, os.path.join(self.folder, name))
        return {}


def _reply(code, message):
    if isinstance(message, bytes):
        message = message.decode('utf-8', 'replace')
    return '%s %s' % (code, message)


class SmtpMailer:
    """Real delivery over SMTP through yagmail.

    Returns {address: reply} for recipients the server refused; raises
    MailError when the message could not be handed over at all.
    """

    def __init__(self, settings):
        self.settings = settings

    def send(self, mail):
        client = _client(self.settings)
        try:
            result = client.send(**_message_args(mail))
        except smtplib.SMTPRecipientsRefused as exc:
            # Everyone refused: still a per-recipient answer, for the caller to sort.
            return {addr: _reply(*reply) for addr, reply in exc.recipients.items()}
        except smtplib.SMTPResponseException as exc:
            raise MailError('SMTP server replied %s' % _reply(exc.smtp_code, exc.smtp_error),
                            temporary=400 <= exc.smtp_code < 500)
        except (smtplib.SMTPException, socket.timeout, OSError) as exc:
            raise MailError('SMTP server %s:%s unreachable: %s' % (
                self.settings.smtp_host, self.settings.smtp_port, exc), temporary=True)
        finally:
            client.close()
        # yagmail answers False, not an exception, when it gave up reconnecting.
        if result is False:
            raise MailError('SMTP server kept disconnecting; message not sent', temporary=True)
        return {addr: _reply(*reply) for addr, reply in (result or {}).items()}


def create_mailer(settings):
    if settings.mail_backend == 'smtp':
        return SmtpMailer(settings)
    return OutboxMailer(settings)
