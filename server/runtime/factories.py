"""What the settings make: the generator and the notifier a server runs with.

Wiring in one place: the generators and the notifiers take plain values
(URLs, timeouts, headers), and only this module reads `Settings` for them.
"""

from __future__ import annotations

import os

from genjobs.server.generators import (
    DemoGenerator,
    Generator,
    HttpGenerator,
    NoopGenerator,
    OpenAIGenerator,
    Providers,
    Watchdog,
    parse_headers,
    parse_prices,
)
from genjobs.server.generators.prompts import Prompts
from genjobs.server.model.progress import ProgressLink
from genjobs.server.notify.mail import MailSender, SmtpConfig
from genjobs.server.notify.quota import MailQuota
from genjobs.server.notify.sender import Notifier, Sender
from genjobs.server.notify.webhook import WebhookSender
from genjobs.server.runtime.config import Settings
from genjobs.server.storage.store import Store


def make_generator(settings: Settings, progress: ProgressLink | None = None) -> Generator:
    """The generator named by configuration, held to every attempt's time limits."""
    kind = settings.generator
    if settings.providers_file and kind != "openai":
        raise SystemExit(
            "genjobs: GENJOBS_PROVIDERS_FILE is the openai generator's: set GENJOBS_GENERATOR=openai"
        )
    if kind == "noop":
        return NoopGenerator()  # returns at once: nothing to watch, and benchmarks measure the service
    inner: Generator
    if kind == "demo":
        inner = DemoGenerator()
    elif kind == "http":
        if not settings.generator_url:
            raise SystemExit("genjobs: GENJOBS_GENERATOR=http needs GENJOBS_GENERATOR_URL")
        inner = HttpGenerator(
            settings.generator_url,
            settings.generator_timeout_seconds,
            parse_headers(settings.generator_headers),
            progress,
        )
    elif kind == "openai":
        inner = OpenAIGenerator(
            _providers(settings), Prompts.load(settings.prompts_file), settings.attempt_timeout_seconds
        )
    else:
        raise SystemExit(f"genjobs: unknown generator {kind!r} (use 'demo', 'http', 'openai' or 'noop')")
    return Watchdog(inner, settings.attempt_timeout_seconds, settings.stream_idle_seconds)


def _providers(settings: Settings) -> Providers:
    """The providers file's providers, or the one the GENJOBS_OPENAI_* settings describe."""
    if settings.providers_file:
        return Providers.load(settings.providers_file)
    key = settings.openai_api_key or os.environ.get("OPENAI_API_KEY", "")
    if not key and "api.openai.com" in settings.openai_base_url:
        raise SystemExit("genjobs: the OpenAI API needs GENJOBS_OPENAI_API_KEY (or OPENAI_API_KEY)")
    return Providers.single(
        settings.openai_base_url, key, settings.openai_model, parse_prices(settings.openai_prices)
    )


def make_notifier(settings: Settings, store: Store, webhook_secret: str) -> Notifier:
    """The notifier for these settings: webhooks always, mail when GENJOBS_SMTP_URL is set."""
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
