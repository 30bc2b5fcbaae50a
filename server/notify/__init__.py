"""Notifications: what tells an owner that a job or bulk job ended, and how
it reaches them (a signed webhook, a mail), with one delivery mechanism for
every channel: the `notifications` collection holds a delivery state per
channel, and `sender.Notifier` claims due deliveries and sends them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.notify.sender import Notifier
    from server.runtime.config import Settings
    from server.storage.store import Store


def make_notifier(settings: Settings, store: Store, webhook_secret: str) -> Notifier:
    """The notifier for these settings: webhooks always, mail when GENJOBS_SMTP_URL is set."""
    from server.notify.mail import MailSender, SmtpConfig
    from server.notify.quota import MailQuota
    from server.notify.sender import Notifier, Sender
    from server.notify.webhook import WebhookSender

    senders: list[Sender] = [
        WebhookSender(webhook_secret, settings.webhook_timeout_seconds, settings.webhook_allow_private)
    ]
    if settings.smtp_url:
        try:
            config = SmtpConfig.from_url(settings.smtp_url, settings.smtp_from)
        except ValueError as exc:
            raise SystemExit(f"genjobs: {exc}") from exc
        quota = MailQuota(store.database.db["mail_quota"], settings.mail_per_owner_per_hour)
        senders.append(MailSender(config, settings.public_url, settings.smtp_timeout_seconds, quota))
    return Notifier(store, senders, settings.webhook_backoff_seconds, settings.notify_claim_seconds)
