"""`listener webhook set`: point Evolution's webhook of each instance at the listener's receiver
(docs/design.md, "Delivery feedback"), with the events the listener reads and the `jwt_key` header
that makes Evolution sign every post with LISTENER_WEBHOOK_SECRET."""

from __future__ import annotations

from urllib.parse import urlsplit

from listener.commands.oneshot import connection
from listener.errors import ConfigurationError, ProviderError
from listener.providers.sender import EvolutionSender
from listener.queries import q
from listener.settings import Settings


def check(settings: Settings, url: str) -> str:
    """The secret to send, after checking the settings and the URL (one clear line if not)."""
    secret = settings.webhook_secret
    if secret is None or not secret.get_secret_value().strip():
        raise ConfigurationError(
            "LISTENER_WEBHOOK_SECRET is required: Evolution signs its posts with it"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"--url is not an http(s) URL: {url!r}")
    return secret.get_secret_value().strip()


async def instances_in_use(database_url: str, settings: Settings) -> list[str]:
    """EVOLUTION_INSTANCE and every instance a campaign that is not archived names, its
    `instance` and every number of its pool (`instances`)."""
    names = [settings.evolution_instance] if settings.evolution_instance else []
    async with connection(database_url, "reading the campaigns' instances") as conn:
        rows = await (await conn.execute(q("webhook_instances"))).fetchall()
    names += [row["instance"] for row in rows]
    return list(dict.fromkeys(names))


async def set_webhooks(settings: Settings, url: str, instances: list[str]) -> list[str]:
    """Configure the webhook of each instance; returns the ones done (the first failure
    raises, naming its instance)."""
    secret = check(settings, url)
    sender = EvolutionSender(settings)
    done: list[str] = []
    try:
        for instance in instances:
            try:
                await sender.set_webhook(instance=instance, url=url, secret=secret)
            except ProviderError as exc:
                done_text = f" (done: {', '.join(done)})" if done else ""
                raise ProviderError(
                    f"webhook set on instance {instance} failed: {exc}{done_text}",
                    provider=exc.provider,
                    status=exc.status,
                ) from exc
            done.append(instance)
    finally:
        await sender.aclose()
    return done
