"""Mail delivery: compose a report message and hand it to a backend.

Both backends build the message with the standard library's email package
(build_message), so what lands in the outbox is what an SMTP server would
receive.
"""
import base64
import datetime
import email.utils
import functools
import os
import re
import smtplib
import ssl
import threading
import time
import uuid
from email.base64mime import body_encode
from email.encoders import encode_base64
from email.header import Header
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Dict, List, NamedTuple, Optional, Protocol

import msgtemplates

from formats import content_type_of
from reldates import describe as describe_params

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


class Mailer(Protocol):
    """A way out for messages: the outbox folder, or an SMTP server."""

    def send(self, mail: 'Mail') -> Dict[str, str]:
        """Hand the message over, in one attempt, and return each recipient's
        reply ("250 ..." when it was accepted, "4xx ..." to try again later,
        "5xx ..." refused). Raises MailError when nothing could be handed over
        at all; its `temporary` says whether trying later may help."""

    def close(self) -> None:
        """Let go of what the calling thread keeps open (a connection), if
        anything: its worker is ending."""


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


def compose(run, title: str, to: List[str], path: str, seconds: float, *,
            link: Optional[str] = None, link_expires: Optional[datetime.datetime] = None,
            limit_mb: Optional[float] = None, cut_at: Optional[int] = None,
            message_id: Optional[str] = None, date: Optional[datetime.date] = None) -> 'Mail':
    """The message for a finished run; `to` is who still needs it. With a
    `link` the file is not attached and the body says why. Subject and body
    are the run's templates (msgtemplates.DEFAULTS when it has none); a
    template that cannot be rendered raises TemplateFailure."""
    name = os.path.basename(path)
    if link:
        size = os.path.getsize(path)
        # Providers count the message after base64 (4 bytes per 3, CRLF every
        # 76): say so, or "372.8 KB is over 0.5 MB" reads as a mistake.
        encoded = -(-size // 3) * 4
        encoded += -(-encoded // 76) * 2
        file_note = '\n'.join([
            'File: %s is %s: too large to attach. As an attachment it would take '
            '%s after base64 encoding, plus headers, over the mail provider\'s %g MB '
            'limit.' % (name, human_size(size), human_size(encoded), limit_mb),
            'Download it here until %s UTC:' % link_expires.strftime('%Y-%m-%d %H:%M'),
            link])
    else:
        zipped = ' (zipped)' if name.endswith('.zip') else ''
        file_note = 'File: %s, attached%s' % (name, zipped)
    cut_note = ('NOTE: this report was cut at {:,} rows (the max_rows limit); '
                'the data has more.'.format(cut_at)) if cut_at else ''
    context = msgtemplates.base_context(
        title=title, report=run.report, params=run.params, date=date or datetime.date.today(),
        stamp=run.created_at.strftime('%Y%m%d-%H%M%S'), rows=run.rows,
        size=human_size(run.bytes), cut=bool(cut_at), run_id=run.id)
    # The values used, and what each relative date asked for (reldates.py).
    context['parameters'] = describe_params(run.params, run.asked_params, run.params_timezone)
    context.update(took='%.1f s' % seconds, file_name=name, file_note=file_note,
                   link=link or '', cut_note=cut_note,
                   link_expires=link_expires.strftime('%Y-%m-%d %H:%M') if link else '')
    subject = msgtemplates.render('subject', run.subject or msgtemplates.DEFAULTS['subject'],
                                  context)
    body = msgtemplates.render('body', run.body or msgtemplates.DEFAULTS['body'], context)
    # What nobody may miss, whatever the sender's template says: where the
    # file is when it is not attached, and that the data was cut.
    if link and link not in body:
        body = body.rstrip('\n') + '\n\n' + file_note
    if cut_note and cut_note not in body:
        body = body.rstrip('\n') + '\n\n' + cut_note
    return Mail(list(to), subject, body, None if link else path,
                message_id or '<nightshift-run-%d@nightshift>' % run.id)


def compose_notice(run, title: str, to: List[str], *, message_id: str,
                   date: Optional[datetime.date] = None) -> 'Mail':
    """The short message a run with send rule `notice` sends when its report
    has no rows: no file, the window it covered, nothing else to read."""
    window = msgtemplates.params_text(run.params)
    window = window if window != 'none' else 'all rows'
    body = '\n'.join([
        'No data for %s: %s.' % (title, window),
        '',
        'The report ran%s and found no rows, so no file is attached.'
        % (' for %s' % date.isoformat() if date else ''),
        '',
        'Run #%d, sent by Nightshift.' % run.id])
    subject = msgtemplates.one_line('Nightshift: no data for %s (%s)' % (title, window))
    return Mail(list(to), subject, body, None, message_id)


def build_message(settings, mail):
    """The MIME message: a plain-text body (no HTML part, so no value is
    ever read as markup) and the file as an attachment with its name.

    Built with the email package's compat32 classes, which store header text
    as given: policy.default parses every header it is handed, ~1 ms a
    message, the largest cost of mailing a burst. So each value is made
    safe here: one line (msgtemplates.one_line, checked addresses, our own
    Message-ID), and RFC 2047 / 2231 encoding for anything not ASCII."""
    text = MIMEText(_body(mail), 'plain', 'utf-8')  # base64, as utf-8 is sent
    if mail.attachment:
        # Both parts are base64, whose lines cannot hold a '.' or '_': no
        # need for the generator to search the text for a safe boundary
        # (a regular expression compiled per message).
        message = MIMEMultipart('mixed', boundary='nightshift_%s.part' % uuid.uuid4().hex)
        message.attach(text)
        name = os.path.basename(mail.attachment)
        # By the format (formats.py): a .csv.gz is gzip, not text/csv.
        maintype, subtype = content_type_of(name).split(';')[0].split('/')
        part = MIMEBase(maintype, subtype)
        with open(mail.attachment, 'rb') as data:
            part.set_payload(data.read())
        encode_base64(part)
        part.add_header('Content-Disposition', 'attachment',
                        filename=name if name.isascii() else ('utf-8', '', name))
        message.attach(part)
    else:
        message = text
    message['Date'] = email.utils.formatdate()
    message['From'] = _sender(settings)
    message['To'] = ', '.join(mail.to)
    # One line whatever went into it: a value cannot start a header of its own.
    subject = msgtemplates.one_line(mail.subject)
    message['Subject'] = subject if subject.isascii() else Header(subject, 'utf-8')
    message['Message-ID'] = mail.message_id
    return message


def _sender(settings):
    sender = settings.mail_from
    if settings.mail_from_name:
        sender = email.utils.formataddr((msgtemplates.one_line(settings.mail_from_name),
                                         sender), charset='utf-8')
    return sender


def _body(mail):
    # One kind of line end: the body is base64, and the text must read alike everywhere.
    return mail.body.replace('\r\n', '\n').replace('\r', '\n')


def message_text(settings, mail):
    """The whole message as text, exactly as it goes to the server (ASCII:
    headers are encoded, the body and the file base64): what
    build_message(...).as_string() gives.

    The usual message (ASCII headers, a plain file name) is written here
    directly: building and flattening the email package's objects was the
    largest part of mailing a run in a burst (docs/benchmarks.md). Anything
    else, and every value that would need encoding, goes through
    build_message. tests/test_mail.py compares the two, byte for byte."""
    subject = msgtemplates.one_line(mail.subject)
    sender = _sender(settings)
    name = os.path.basename(mail.attachment) if mail.attachment else None
    to = ', '.join(mail.to)
    if not all(_PLAIN_VALUE.match(value) for value in (subject, sender, to, mail.message_id)) \
            or (name is not None and not _PLAIN_NAME.match(name)):
        return build_message(settings, mail).as_string()
    body = _body(mail)
    text = ('Content-Type: text/plain; charset="utf-8"\nMIME-Version: 1.0\n'
            'Content-Transfer-Encoding: base64\n')
    encoded_body = body_encode(body.encode('utf-8')) if body else ''
    envelope = ('Date: %s\nFrom: %s\nTo: %s\nSubject: %s\nMessage-ID: %s\n'
                % (email.utils.formatdate(), sender, to, subject, mail.message_id))
    if name is None:
        return '%s%s\n%s' % (text, envelope, encoded_body)
    boundary = 'nightshift_%s.part' % uuid.uuid4().hex
    attached = encoded_file(mail.attachment)
    return ''.join([
        'Content-Type: multipart/mixed; boundary="%s"\nMIME-Version: 1.0\n' % boundary,
        envelope, '\n--', boundary, '\n', text, '\n', encoded_body, '\n--', boundary, '\n',
        'Content-Type: %s\nMIME-Version: 1.0\nContent-Transfer-Encoding: base64\n'
        'Content-Disposition: attachment; filename="%s"\n\n'
        % (content_type_of(name).split(';')[0], name),
        attached, '\n--', boundary, '--\n'])


def encoded_file(path):
    """The file's bytes as email.encoders.encode_base64 writes them: lines
    of 76, each ending in a newline. A batch's runs (batches.py) mail
    copies of one file: a small file's text is kept by its bytes, so the
    same bytes are encoded once (in Python, line by line, a tenth of a
    small run's mailing) and other bytes never share it."""
    with open(path, 'rb') as data:
        content = data.read()
    if len(content) > ENCODED_KEPT_BYTES:
        return _base64_lines(content)
    return _kept_base64_lines(content)


def _base64_lines(content):
    return base64.encodebytes(content).decode('ascii')


# Files up to this size keep their base64 text, the last few of them: at
# most about 5 MB, bytes and text, in a process.
ENCODED_KEPT_BYTES = 256 * 1024
ENCODED_KEPT_FILES = 8
_kept_base64_lines = functools.lru_cache(maxsize=ENCODED_KEPT_FILES)(_base64_lines)


# Header values Message.as_string writes as they are (no folding, no
# encoding): printable ASCII words, one space between them.
_PLAIN_VALUE = re.compile(r'[!-~]+(?: [!-~]+)*\Z')
# A file name add_header puts in quotes as it is: no quote or backslash to
# escape, one space between words (as_string folds no header).
_PLAIN_NAME = re.compile(r'[!#-\[\]-~]+(?: [!#-\[\]-~]+)*\Z')




# The reply a recipient of a message that went to the outbox gets.
OUTBOX_REPLY = '250 written to the outbox'


class OutboxMailer:
    """Development backend: each message becomes an .eml file in a folder."""

    def __init__(self, settings):
        self.folder = settings.outbox_dir
        self.settings = settings

    def send(self, mail):
        os.makedirs(self.folder, exist_ok=True)
        text = message_text(self.settings, mail)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
        name = '%s-%s.eml' % (stamp, uuid.uuid4().hex[:8])
        tmp = os.path.join(self.folder, '.' + name)
        with open(tmp, 'w', encoding='utf-8') as out:
            out.write(text)
        os.replace(tmp, os.path.join(self.folder, name))
        return {address: OUTBOX_REPLY for address in mail.to}

    def close(self):
        pass


def _data(conn, text):
    """SMTP.data(text) for a message whose lines end in a bare newline (as
    message_text writes them): CRLF line ends and a dot doubled at the
    start of a line by two str.replace calls, where smtplib runs two
    regular expressions over the whole message (5% of a burst's consumer
    CPU). Anything else is handed to smtplib as it is."""
    if '\r' in text:
        return conn.data(text)
    code, reply = conn.docmd('data')
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    data = text.replace('\n', '\r\n').replace('\r\n.', '\r\n..')
    if data.startswith('.'):
        data = '.' + data
    if not data.endswith('\r\n'):
        data += '\r\n'
    conn.send((data + '.\r\n').encode('ascii'))
    return conn.getreply()


def _reply(code, message):
    if isinstance(message, bytes):
        message = message.decode('utf-8', 'replace')
    return '%s %s' % (code, message)


SECURITY_HINT = ('set NIGHTSHIFT_SMTP_SECURITY to what the server speaks: starttls (port '
                 '587), ssl (port 465) or none (a plain server, e.g. MailHog on 1025)')


class SmtpMailer:
    """Real delivery over SMTP: one transaction per message, over a connection
    each thread keeps for its next message.

    `send` returns {address: reply} for every recipient. Only a recipient
    whose reply starts with 2 got the message: its RCPT was accepted and then
    the server accepted the DATA that carried it. A recipient with no reply
    of its own (the server hung up, or never answered after DATA) gets a 4xx
    reply saying so, so it is tried again, never counted as sent. Raises
    MailError when nothing could be handed over at all.

    A connection is kept only after a transaction the server finished with a
    2xx to the DATA; anything else (a refusal, a lost reply, a hang-up)
    closes it. A kept one idle longer than `smtp_idle_close` seconds is
    closed; one quiet for RSET_AFTER seconds or more must answer RSET with
    250 first. One that does not, or that answers the next MAIL FROM with
    421 or a hang-up, is replaced by a new connection: nothing of the
    message went out yet. `smtp_idle_close` 0 keeps none. `clock` is
    seconds, monotonic.
    """

    # In a burst the 250 that ended the last message has just shown the
    # session is alive and reset (RFC 5321 4.1.1.4); an RSET would cost a
    # round trip per message (a fifth of the rate, docs/benchmarks.md).
    RSET_AFTER = 2.0

    def __init__(self, settings, clock=time.monotonic):
        self.settings = settings
        self.clock = clock
        self._kept = threading.local()
        self._context = None

    def send(self, mail):
        text = message_text(self.settings, mail)
        conn = self._take_kept()
        if conn is not None:
            try:
                return self._over(conn, mail.to, text, reused=True)
            except _Stale:
                pass
        return self._over(self._connect(), mail.to, text)

    def close(self):
        """Say goodbye on this thread's kept connection, if it has one (a
        worker thread that is ending)."""
        conn = self._take_kept(check=False)
        if conn is not None:
            _quit(conn)

    def _over(self, conn, recipients, text, reused=False):
        finished = False
        try:
            replies, finished = self._transaction(conn, recipients, text, reused)
            return replies
        finally:
            if finished and self.settings.smtp_idle_close > 0:
                self._kept.conn = (conn, os.getpid(), self.clock())
            else:
                _quit(conn)

    def _take_kept(self, check=True):
        """This thread's kept connection, ready for MAIL FROM, or None."""
        kept = getattr(self._kept, 'conn', None)
        self._kept.conn = None
        if kept is None:
            return None
        conn, pid, since = kept
        if pid != os.getpid():
            # A forked worker holds its parent's socket: a word on it would
            # land in the parent's session. Let go of this copy silently.
            conn.close()
            return None
        if not check:
            return conn
        idle = self.clock() - since
        if idle > self.settings.smtp_idle_close:
            # Servers drop quiet clients; one that has not yet may any moment.
            _quit(conn)
            return None
        if idle < self.RSET_AFTER:
            return conn
        try:
            code, _ = conn.rset()
        except (smtplib.SMTPException, OSError):
            code = None
        if code != 250:
            conn.close()
            return None
        return conn

    def _where(self):
        return 'SMTP server %s:%s' % (self.settings.smtp_host, self.settings.smtp_port)

    def _tls_context(self):
        # Made once: loading the system's CA certificates takes ~30 ms of
        # CPU, more than the rest of a small message's connection.
        if self._context is None:
            self._context = ssl.create_default_context()
        return self._context

    def _connect(self):
        s = self.settings
        context = self._tls_context() if s.smtp_security != 'none' else None
        try:
            if s.smtp_security == 'ssl':
                conn = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                        context=context)
            else:
                conn = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            conn.ehlo()
            if s.smtp_security == 'starttls':
                if not conn.has_extn('starttls'):
                    conn.close()
                    raise MailError('%s does not offer STARTTLS: %s'
                                    % (self._where(), SECURITY_HINT), temporary=False)
                conn.starttls(context=context)
                conn.ehlo()
            if s.smtp_user:
                conn.login(s.smtp_user, s.smtp_password)
        except MailError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise MailError('%s: its TLS certificate was not accepted (%s)'
                            % (self._where(), exc.verify_message), temporary=False)
        except ssl.SSLError as exc:
            # A TLS handshake with a server that speaks plain SMTP (or the
            # other way round) is a configuration error, not an outage.
            raise MailError('%s: TLS failed (%s): %s'
                            % (self._where(), exc.reason or exc, SECURITY_HINT),
                            temporary=False)
        except smtplib.SMTPAuthenticationError as exc:
            # 535 (bad credentials) is for good; 454 (the server cannot
            # check them just now) is worth another try.
            raise MailError('%s refused the login: %s'
                            % (self._where(), _reply(exc.smtp_code, exc.smtp_error)),
                            temporary=400 <= exc.smtp_code < 500)
        except smtplib.SMTPResponseException as exc:
            raise MailError('%s replied %s' % (self._where(),
                                              _reply(exc.smtp_code, exc.smtp_error)),
                            temporary=not 500 <= exc.smtp_code < 600)
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError('%s unreachable: %s' % (self._where(), exc), temporary=True)
        return conn

    def _transaction(self, conn, recipients, text, reused=False):
        """(replies, finished): `finished` when the server answered the DATA
        with 2xx, so the connection may carry another message. On a `reused`
        connection a hang-up or 421 at MAIL FROM raises _Stale."""
        replies = {}
        accepted = []
        try:
            try:
                # docmd, not mail()/rcpt(): those parse every address again
                # (email.utils) to quote it; ours are checked plain addresses.
                code, message = conn.docmd('mail', 'FROM:<%s>' % self.settings.mail_from)
            except (smtplib.SMTPServerDisconnected, OSError):
                if reused:
                    raise _Stale()
                raise
            if code == 421 and reused:
                raise _Stale()
            if code != 250:
                raise MailError('%s refused the sender: %s'
                                % (self._where(), _reply(code, message)),
                                temporary=not 500 <= code < 600)
            for address in recipients:
                code, message = conn.docmd('rcpt', 'TO:<%s>' % address)
                replies[address] = _reply(code, message)
                if code in (250, 251):
                    accepted.append(address)
                elif code == 421:
                    # The server is closing: no DATA will follow, so nobody
                    # accepted so far gets it, and nobody after was asked.
                    for earlier in accepted:
                        replies[earlier] = '421 not sent: the server closed the connection'
                    return _unanswered(replies, recipients, 'not sent: the server closed '
                                       'the connection before this recipient'), False
            if not accepted:
                return _unanswered(replies, recipients,
                                   'not sent: no recipient was accepted'), False
            try:
                code, message = _data(conn, text)
            except smtplib.SMTPDataError as exc:
                code, message = exc.smtp_code, exc.smtp_error
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                # The message may have arrived and only the reply was lost:
                # it goes again (same Message-ID) rather than perhaps never.
                for address in accepted:
                    replies[address] = ('451 no reply after the message was sent (%s); '
                                        'sending again' % (str(exc) or type(exc).__name__))
                return _unanswered(replies, recipients, 'not sent'), False
            # The DATA reply is every accepted recipient's answer: 250 sent,
            # 4xx try again, 5xx refused.
            for address in accepted:
                replies[address] = _reply(code, message)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Before any DATA: an RCPT accepted earlier got nothing.
            for address in accepted:
                replies[address] = '421 not sent: connection lost (%s)' % exc
            return _unanswered(replies, recipients,
                               'not sent: connection lost (%s)' % exc), False
        return _unanswered(replies, recipients, 'not sent'), 200 <= code < 300


class _Stale(Exception):
    """A kept connection the server had given up on: nothing was sent on it."""


def _quit(conn):
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


def _unanswered(replies, recipients, why):
    """Every recipient with a reply: those the server never answered for get
    a temporary one, so they are tried again."""
    for address in recipients:
        replies.setdefault(address, '421 %s' % why)
    return replies


def create_mailer(settings) -> Mailer:
    if settings.mail_backend == 'smtp':
        return SmtpMailer(settings)
    return OutboxMailer(settings)
