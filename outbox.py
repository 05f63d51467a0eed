"""Read the messages the outbox mail backend wrote, for the page that shows
them the way MailHog shows caught mail."""
import csv
import email
import email.parser
import email.policy
import io
import os
import re

# The names OutboxMailer gives its files; anything else is not ours to show.
MESSAGE_NAME = re.compile(r'\d{8}-\d{6}-[0-9a-f]{8}\.eml\Z')


class Message:
    def __init__(self, name, parsed, size):
        self.name = name
        self.size = size
        self.parsed = parsed

    def header(self, key):
        return str(self.parsed.get(key, ''))

    @property
    def attachments(self):
        return [part for part in self.parsed.walk() if part.get_filename()]

    @property
    def text(self):
        body = self.parsed.get_body(('plain',))
        return body.get_content() if body is not None else ''


def _path(folder, name):
    if not isinstance(name, str) or not MESSAGE_NAME.match(name):
        return None
    path = os.path.join(folder, name)
    return path if os.path.isfile(path) else None


def read_message(folder, name, headers_only=False):
    """The message called `name`, or None when there is no such message.
    `headers_only` reads just the header block: a listing must not read
    25 MB attachments."""
    path = _path(folder, name)
    if path is None:
        return None
    with open(path, 'rb') as source:
        if headers_only:
            parsed = email.parser.BytesHeaderParser(policy=email.policy.default) \
                .parsebytes(_header_block(source))
        else:
            parsed = email.message_from_binary_file(source, policy=email.policy.default)
    return Message(name, parsed, os.path.getsize(path))


def _header_block(source, most=64 * 1024):
    head = source.read(most)
    for blank in (b'\r\n\r\n', b'\n\n'):
        end = head.find(blank)
        if end >= 0:
            return head[:end + len(blank)]
    return head


def list_messages(folder, limit=200):
    """Newest first (the names start with the time they were written); headers only."""
    try:
        names = sorted((n for n in os.listdir(folder) if MESSAGE_NAME.match(n)), reverse=True)
    except FileNotFoundError:
        return []
    found = (read_message(folder, name, headers_only=True) for name in names[:limit])
    return [message for message in found if message is not None]


class Attachment:
    """One attached file, decoded once."""

    def __init__(self, part):
        self.filename = part.get_filename()
        self.content_type = part.get_content_type()
        self.data = part.get_payload(decode=True) or b''

    @property
    def is_csv(self):
        return self.content_type == 'text/csv' or self.filename.lower().endswith('.csv')


def attachments(message):
    return [Attachment(part) for part in message.attachments]


def attachment(message, index):
    """The Attachment at `index`, or None."""
    parts = message.attachments
    if not 0 <= index < len(parts):
        return None
    return Attachment(parts[index])


def preview_rows(data, limit=21):
    """The header and first rows of a CSV attachment, for a glance without downloading."""
    text = data[:256 * 1024].decode('utf-8-sig', 'replace')
    rows = []
    for row in csv.reader(io.StringIO(text, newline='')):
        if len(rows) == limit:
            break
        rows.append(row)
    return rows
