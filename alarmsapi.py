"""The notification log: GET /api/notifications, and its rows on the page."""
import json

import web
from alarms import notification_as_dict, shown_target
from errors import InputError
from guards import json_response
from inputs import WHOLE_NUMBER, query_params
from models import Notification, utcnow
from vocab import SendStatus

PAGE_ROWS = 10


def _note_text(note):
    return note.subject if note.channel == 'email' else json.loads(note.body).get('text', '') \
        .split('\n', 1)[0]


def install_notifications(app):
    @app.get('/api/notifications')
    def list_notifications():
        """Operator emails and webhook POSTs, newest first, with their tries."""
        filters = query_params()
        unknown = sorted(set(filters) - {'status', 'limit'})
        if unknown:
            raise InputError(unknown[0], 'unknown filter; expected status, limit')
        query = Notification.select().order_by(Notification.id.desc())
        status = filters.get('status')
        if status is not None:
            if status not in list(SendStatus):
                raise InputError('status', 'must be one of %s' % ', '.join(SendStatus))
            query = query.where(Notification.status == status)
        limit = filters.get('limit', '50')
        if not WHOLE_NUMBER.match(limit) or not 1 <= int(limit) <= 500:
            raise InputError('limit', 'must be a whole number from 1 to 500')
        return json_response(200, {'notifications': [
            notification_as_dict(note) for note in query.limit(int(limit))]})

    @app.get('/ui/notifications')
    def notifications_fragment():
        notes = list(Notification.select().order_by(Notification.id.desc()).limit(PAGE_ROWS))
        return web.render('alarms_notification_rows', notes=notes, now=utcnow(), ago=web.ago,
                          iso=web.iso, utc_text=web.utc_text, shown_target=shown_target,
                          note_text=_note_text)
