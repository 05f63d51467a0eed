"""Where finished report files are kept for download and retention.

Web and worker may run on different machines (Heroku dynos share no disk),
so files live behind this small interface:

- `LocalFileStore`: a folder; the default for one machine.
- `DatabaseFileStore`: chunks in the application's own database (PostgreSQL
  in a multi-machine deploy), so no extra service is needed.

Both stream in chunks: nothing holds a whole file in memory.
"""
import os
import shutil
from typing import Iterator, Protocol

from models import ReportFileChunk, db

CHUNK = 1 << 20


class FileStore(Protocol):
    """Where finished report files are kept. Keys are made by Nightshift
    ("run-12/a1/orders-20250601-070000.csv"), never by users."""

    kind: str  # 'local' or 'database'

    def save(self, key: str, source_path: str) -> None:
        """Keep the file at `source_path` under `key`, replacing what was
        there; all or nothing. Raises OSError or a database error; ValueError
        for a key that would leave the store."""

    def exists(self, key: str) -> bool:
        """Whether a file is kept under `key`."""

    def open_chunks(self, key: str) -> Iterator[bytes]:
        """The file's bytes in chunks of at most 1 MB. Raises
        FileNotFoundError now (not while iterating) when nothing is kept."""

    def delete(self, key: str) -> None:
        """Forget the file; nothing happens when there is none."""


class LocalFileStore:
    kind = 'local'

    def __init__(self, folder):
        self.folder = folder

    def _path(self, key):
        # Keys are made by Nightshift ("run-12/orders-....csv"), never by users;
        # still, refuse anything that could leave the folder.
        if key.startswith(('/', '\\')) or '..' in key.split('/'):
            raise ValueError('bad file key %r' % key)
        return os.path.join(self.folder, key)

    def save(self, key, source_path):
        target = self._path(key)
        if os.path.abspath(source_path) != os.path.abspath(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source_path, target + '.part')
            os.replace(target + '.part', target)

    def exists(self, key):
        return os.path.isfile(self._path(key))

    def open_chunks(self, key):
        path = self._path(key)
        handle = open(path, 'rb')  # opened now, so a missing file fails here

        def chunks():
            with handle:
                while True:
                    data = handle.read(CHUNK)
                    if not data:
                        return
                    yield data
        return chunks()

    def delete(self, key):
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        folder = os.path.dirname(self._path(key))
        try:
            os.rmdir(folder)
        except OSError:
            pass


class DatabaseFileStore:
    kind = 'database'

    def save(self, key, source_path):
        with db.atomic():
            ReportFileChunk.delete().where(ReportFileChunk.key == key).execute()
            with open(source_path, 'rb') as source:
                seq = 0
                while True:
                    data = source.read(CHUNK)
                    if not data:
                        break
                    ReportFileChunk.create(key=key, seq=seq, data=data)
                    seq += 1

    def exists(self, key):
        return ReportFileChunk.select().where(ReportFileChunk.key == key).exists()

    def open_chunks(self, key):
        seqs = [s for (s,) in ReportFileChunk.select(ReportFileChunk.seq)
                .where(ReportFileChunk.key == key).order_by(ReportFileChunk.seq).tuples()]
        if not seqs:
            raise FileNotFoundError(key)

        def chunks():
            # One chunk per query: memory stays at one chunk.
            for seq in seqs:
                data = (ReportFileChunk.select(ReportFileChunk.data)
                        .where(ReportFileChunk.key == key, ReportFileChunk.seq == seq).scalar())
                yield bytes(data)
        return chunks()

    def delete(self, key):
        ReportFileChunk.delete().where(ReportFileChunk.key == key).execute()


def create_file_store(settings) -> FileStore:
    if settings.file_store == 'database':
        return DatabaseFileStore()
    return LocalFileStore(settings.reports_dir)
