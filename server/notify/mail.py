"""Mail: a plain-text message with a short HTML part, sent through the SMTP
server of GENJOBS_SMTP_URL by aiosmtplib, on a notifier worker thread (its
own short event loop: never the server's loop, never the dispatcher)."""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

import aiosmtplib

from server.notify.channels import DELIVERED, EMAIL, FAILED, PENDING, Doc
from server.notify.sender import Outcome

MAX_ADDRESS = 254
MAX_ATTEMPTS = 20  # with backoff capped at 10 minutes: a mail server may be down for hours


def address_problem(address: str) -> str:
    """Why `address` is not a mail address genjobs can send to ("" when it is)."""
    if len(address) > MAX_ADDRESS:
        return f"at most {MAX_ADDRESS} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        return "no spaces or control characters"
    try:
        parsed = Address(addr_spec=address)
    except Exception:  # the stdlib parser raises many kinds (even AttributeError) on odd input
        return "not a mail address (user@example.com)"
    if not parsed.username or "." not in parsed.domain.strip(".") or parsed.addr_spec != address:
        return "not a mail address (user@example.com)"
    return ""


@dataclass(frozen=True)
class SmtpConfig:
    """Where mail goes: GENJOBS_SMTP_URL (smtp:// or smtps://) and GENJOBS_SMTP_FROM."""

    host: str
    port: int
    username: str
    password: str
    use_tls: bool  # smtps://: TLS from the start; smtp://: STARTTLS when the server offers it
    sender: str

    @classmethod
    def from_url(cls, url: str, sender: str) -> SmtpConfig:
        """Parse `smtp://user:pass@host:port` or `smtps://...`; ValueError when it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("GENJOBS_SMTP_URL must look like smtp://user:pass@host:port or smtps://...")
        use_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if use_tls else 25),
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            use_tls=use_tls,
            sender=sender or f"genjobs@{parts.hostname}",
        )


def dollars(cents: int) -> str:
    """Cents as dollars: 1234 -> $12.34."""
    return f"${cents / 100:,.2f}"


def compose(doc: Doc, sender: str, public_url: str) -> EmailMessage:
    """The mail for notification `doc`: what finished, how it went, its cost, a link."""
    payload = doc["payload"]
    if doc.get("bulk_job_id"):
        kind, ident, path = "Bulk job", doc["bulk_job_id"], "bulk"
        total, failed = payload["total_items"], payload["failed_items"]
        done = payload["completed_items"]
        subject = f"Bulk job {ident} completed: {done} of {total} succeeded" + (
            f", {failed} failed" if failed else ""
        )
        lines = [
            f"{done} of {total} items completed, {failed} failed, {payload['cancelled_items']} cancelled.",
            *[f"Failed {line}" for line in payload.get("error_summary", [])[:20]],
        ]
    else:
        kind, ident, path = "Job", doc["job_id"], "jobs"
        status = payload["status"].lower()
        subject = f"Job {ident} {status}"
        what = payload.get("topic") or ", ".join(payload.get("keywords", [])) or payload.get("mode", "")
        lines = [f"{payload.get('mode', '').title()} job {what!r}: {status}."]
        if payload.get("title"):
            lines.append(f"Result: {payload['title']!r}, {payload.get('word_count', 0)} words.")
        if payload.get("error"):
            lines.append(f"Error: {payload['error']['code']}: {payload['error']['message']}")
    lines.append(f"Cost: {dollars(int(payload.get('cost_cents', 0)))}.")
    link = f"{public_url.rstrip('/')}/{path}/{ident}" if public_url else ""
    text = f"{kind} {ident} finished.\n\n" + "\n".join(lines) + (f"\n\nOpen it: {link}\n" if link else "\n")
    markup = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    if link:
        markup += f'<p><a href="{html.escape(link)}">Open it</a></p>'
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = doc[EMAIL.target]
    message["Message-ID"] = make_msgid(idstring=str(doc["_id"]), domain="genjobs")
    message.set_content(text)
    message.add_alternative(
        f"<html><body><h3>{html.escape(kind)} {ident} finished</h3>{markup}</body></html>", subtype="html"
    )
    return message


class MailSender:
    """Sends the email channel of notifications."""

    channel = EMAIL
    max_attempts = MAX_ATTEMPTS

    def __init__(self, config: SmtpConfig, public_url: str = "", timeout_seconds: float = 10.0) -> None:
        self.config = config
        self.public_url = public_url
        self.timeout_seconds = timeout_seconds

    def endpoint(self, doc: Doc) -> str:
        """Every mail goes through the one SMTP server."""
        return f"smtp:{self.config.host}:{self.config.port}"

    def send(self, doc: Doc) -> Outcome:
        """Hand the mail to the SMTP server once; what came of it."""
        message = compose(doc, self.config.sender, self.public_url)
        config = self.config
        try:
            asyncio.run(
                aiosmtplib.send(
                    message,
                    hostname=config.host,
                    port=config.port,
                    username=config.username or None,
                    password=config.password or None,
                    use_tls=config.use_tls,
                    start_tls=False if config.use_tls else None,  # None: STARTTLS where offered
                    timeout=self.timeout_seconds,
                )
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):  # permanent; a 4xx may pass later
                return Outcome(FAILED, f"the mail server refused the address: {exc}")
            return Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            return Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        return Outcome(DELIVERED)
