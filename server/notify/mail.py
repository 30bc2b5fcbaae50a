"""Mail: a plain-text message with a short HTML part, sent through the SMTP
server of GENJOBS_SMTP_URL by aiosmtplib, on the notifier's event loop
(never the server's loop, never the dispatcher).

The "email" channel: its address is a plain user@domain.name; a server
without GENJOBS_SMTP_URL has no sender for it and refuses it."""

from __future__ import annotations

import asyncio
import html
import ipaddress
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

import aiosmtplib

from genjobs.server.model.channels import DELIVERED, FAILED, PENDING, REFUSED, Channel, Doc, register
from genjobs.server.notify.quota import MailQuota
from genjobs.server.notify.sender import Outcome

MAX_ADDRESS = 254
MAX_ATTEMPTS = 20  # with backoff capped at 10 minutes: a mail server may be down for hours


def address_problem(address: str) -> str:
    """Why `address` is not a mail address genjobs can send to ("" when it is).
    Only user@domain.name: no address literal (user@[127.0.0.1]) or bare
    address, and no source routing (%, !) or quoting, which could have a mail
    relay pass the mail on to a host the domain does not name."""
    if len(address) > MAX_ADDRESS:
        return f"at most {MAX_ADDRESS} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        return "no spaces or control characters"
    local, _, domain = address.rpartition("@")
    if any(c in local for c in '%!"\\'):
        return "no %, !, quotes or backslashes before the @ (no routing through another host)"
    if domain.startswith("[") or _is_ip(domain):
        return "must name a domain, not an address (no user@[127.0.0.1])"
    if not all(_label(part) for part in domain.split(".")):
        return "the domain must be names of letters, digits and hyphens, joined by dots"
    try:
        parsed = Address(addr_spec=address)
    except Exception:  # the stdlib parser raises many kinds (even AttributeError) on odd input
        return "not a mail address (user@example.com)"
    if not parsed.username or "." not in parsed.domain.strip(".") or parsed.addr_spec != address:
        return "not a mail address (user@example.com)"
    return ""


EMAIL = register(
    Channel(
        "email",
        "notify_email",
        "email_delivery",
        "email_attempts",
        "email_next_us",
        "email_last_error",
        "email_claim_token",
        problem=address_problem,
        unconfigured=(
            "EMAIL_NOT_CONFIGURED",
            "email is not configured on this server (GENJOBS_SMTP_URL is unset): notify_email cannot be used",
        ),
    )
)


def _is_ip(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return False
    return True


def _label(part: str) -> bool:
    """A domain name's label: letters (any script), digits and inner hyphens."""
    return bool(part) and part[0] != "-" and part[-1] != "-" and all(c.isalnum() or c == "-" for c in part)


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
    """Sends the email channel of notifications, on the notifier's loop."""

    channel = EMAIL
    max_attempts = MAX_ATTEMPTS

    def __init__(
        self,
        config: SmtpConfig,
        public_url: str = "",
        timeout_seconds: float = 10.0,
        quota: MailQuota | None = None,
    ) -> None:
        self.config = config
        self.public_url = public_url
        self.deadline_seconds = timeout_seconds  # the whole attempt: connect, hello, send
        self.quota = quota

    def endpoint(self, doc: Doc) -> str:
        """Every mail goes through the one SMTP server (each owner's attempts limited apart)."""
        return f"smtp:{self.config.host}:{self.config.port}"

    async def send(self, doc: Doc) -> Outcome:
        """Hand the mail to the SMTP server once, within the deadline; what came of it.
        A mail past its owner's hourly rate is not sent."""
        if self.quota is not None and int(doc[EMAIL.attempts]) == 1:  # counted once a mail
            owner = str(doc.get("owner", ""))
            if not await asyncio.to_thread(self.quota.take, owner):
                return Outcome(
                    REFUSED,
                    f"not sent: {owner} has sent {self.quota.per_hour} mails this hour, "
                    "the most GENJOBS_MAIL_PER_OWNER_PER_HOUR allows",
                )
        message = compose(doc, self.config.sender, self.public_url)
        config = self.config
        try:
            async with asyncio.timeout(self.deadline_seconds):
                await aiosmtplib.send(
                    message,
                    hostname=config.host,
                    port=config.port,
                    username=config.username or None,
                    password=config.password or None,
                    use_tls=config.use_tls,
                    start_tls=False if config.use_tls else None,  # None: STARTTLS where offered
                    timeout=self.deadline_seconds,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):  # permanent; a 4xx may pass later
                return Outcome(FAILED, f"the mail server refused the address: {exc}")
            return Outcome(PENDING, f"{type(exc).__name__}: {exc}")
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            detail = str(exc) or f"not done within {self.deadline_seconds:g} s (GENJOBS_SMTP_TIMEOUT_SECONDS)"
            return Outcome(PENDING, f"{type(exc).__name__}: {detail}")
        return Outcome(DELIVERED)

    async def aclose(self) -> None:
        """Nothing held between mails: each attempt has its own connection."""
