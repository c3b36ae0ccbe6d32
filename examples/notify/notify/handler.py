"""notify: post host maintenance and alarm events to a chat or paging webhook.

``NOTIFY_FORMAT=slack`` (the default) posts a Slack incoming-webhook message
(``text`` plus Block Kit ``blocks``; Mattermost and Rocket.Chat take the same);
``NOTIFY_FORMAT=pagerduty`` posts a PagerDuty Events API v2 event, triggered
when a host enters maintenance or an alarm turns yellow/red and resolved when it
exits or turns green (same ``dedup_key``).

The secret ``webhook`` holds the URL (a Slack webhook URL is a credential), or
TOML with ``url`` and, for PagerDuty, ``routing_key``. Failed posts (connection
errors, 429, 5xx) are retried with ``veba.sdk.retry``, which stops before the
delivery's deadline so that the appliance's own retry policy takes over.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from typing import Any

from veba.sdk import Event, get_logger, remaining, retry, secret

log = get_logger()

FORMAT = os.environ.get("NOTIFY_FORMAT", "slack").strip().lower()
ATTEMPTS = int(os.environ.get("NOTIFY_ATTEMPTS", "5"))

MAINTENANCE = {
    "EnteringMaintenanceModeEvent": ("is entering maintenance mode", "warning", "trigger"),
    "EnteredMaintenanceModeEvent": ("entered maintenance mode", "warning", "trigger"),
    "ExitMaintenanceModeEvent": ("exited maintenance mode", "info", "resolve"),
    "CanceledHostMaintenanceEvent": ("canceled entering maintenance mode", "info", "resolve"),
}
ALARMS = frozenset({"AlarmStatusChangedEvent"})
SEVERITY = {"red": "critical", "yellow": "warning", "green": "info", "gray": "info"}
ICON = {"red": ":red_circle:", "yellow": ":large_yellow_circle:", "green": ":large_green_circle:"}


class WebhookUnavailable(RuntimeError):
    """The webhook did not take the post but may later (connection error, 429, 5xx)."""


class WebhookRejected(RuntimeError):
    """The webhook refused the post (4xx): retrying the same post will not help."""


class UnsupportedEvent(ValueError):
    """An event this function has no message for (check the topic in stack.yml)."""

    http_status = 422  # the same event would fail again: not retried


def handle(req):
    event = Event(req)
    alert = summarise(event)
    url, routing_key = webhook()
    if FORMAT == "pagerduty":
        payload = pagerduty_payload(event, alert, routing_key)
    elif FORMAT == "slack":
        payload = slack_payload(event, alert)
    else:
        raise ValueError(f"NOTIFY_FORMAT is {FORMAT!r}; expected 'slack' or 'pagerduty'")
    status = retry(
        lambda: post(url, payload),
        attempts=ATTEMPTS,
        on=(WebhookUnavailable, OSError),  # OSError: refused, reset, timed out
    )
    log.info("notified", format=FORMAT, status=status, summary=alert["summary"])
    return {"notified": True, "format": FORMAT, "status": status, "summary": alert["summary"]}


def summarise(event: Event) -> dict[str, Any]:
    """What happened, to whom, how bad: the fields both formats are made of."""
    subject = event.subject or ""
    where = " / ".join(
        str(v)
        for v in (event.get("data.Datacenter.Name"), event.get("data.ComputeResource.Name"))
        if v
    )
    if subject in MAINTENANCE:
        what, severity, action = MAINTENANCE[subject]
        host = event.require("data.Host.Name")  # MissingField (a 422) if absent
        moref = event.require("data.Host.Host.Value")
        return {
            "summary": f"Host {host} {what}",
            "severity": severity,
            "action": action,
            "object": host,
            "object_ref": moref,
            "where": where,
            "dedup": f"{event.source}/maintenance/{moref}",
        }
    if subject in ALARMS:
        alarm = event.require("data.Alarm.Name")
        alarm_ref = event.require("data.Alarm.Alarm.Value")
        entity = event.require("data.Entity.Name")
        entity_ref = event.get("data.Entity.Entity.Value", entity)
        before = str(event.get("data.From", "")).lower()
        after = str(event.require("data.To")).lower()
        return {
            "summary": f"Alarm '{alarm}' on {entity}: {before or '?'} → {after}",
            "severity": SEVERITY.get(after, "warning"),
            "action": "resolve" if after == "green" else "trigger",
            "object": entity,
            "object_ref": entity_ref,
            "where": where,
            "status": after,
            "dedup": f"{event.source}/alarm/{alarm_ref}/{entity_ref}",
        }
    raise UnsupportedEvent(
        f"notify handles host maintenance and alarm events, not {subject!r}: "
        "check the function's topic in stack.yml"
    )


def slack_payload(event: Event, alert: dict[str, Any]) -> dict[str, Any]:
    icon = ICON.get(alert.get("status", ""), ":wrench:")
    facts = [
        ("Object", alert["object"]),
        ("Where", alert["where"] or "-"),
        ("User", event.user or "-"),
        ("Time", event.get("data.CreatedTime", "-")),
    ]
    return {
        "text": f"{icon} {alert['summary']}",  # the notification, and clients without blocks
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{alert['summary']}*"}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts],
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"{event.subject} · {event.source} · event {event.id}",
                    }
                ],
            },
        ],
    }


def pagerduty_payload(
    event: Event, alert: dict[str, Any], routing_key: str | None
) -> dict[str, Any]:
    if not routing_key:
        raise ValueError("NOTIFY_FORMAT=pagerduty needs routing_key in the secret 'webhook'")
    return {
        "routing_key": routing_key,
        "event_action": alert["action"],
        "dedup_key": alert["dedup"],  # pairs trigger and resolve; PagerDuty drops repeats
        "payload": {
            "summary": alert["summary"],
            "source": event.source or "vcenter",
            "severity": alert["severity"],
            "timestamp": event.get("data.CreatedTime"),
            "component": alert["object"],
            "group": alert["where"] or None,
            "class": event.subject,
            "custom_details": {"user": event.user, "message": event.message, "event": event.id},
        },
        "client": "veba",
    }


def webhook() -> tuple[str, str | None]:
    """The URL (and PagerDuty routing key) from the secret ``webhook``."""
    text = secret("webhook")
    if text.startswith(("http://", "https://")) and "\n" not in text:
        return text, None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        doc = {}
    url = doc.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("secret 'webhook' holds neither a URL nor TOML with url = \"https://...\"")
    key = doc.get("routing_key")
    return url, key if isinstance(key, str) else None


def post(url: str, payload: dict[str, Any]) -> int:
    left = remaining()
    timeout = 10.0 if left is None else max(0.2, min(10.0, left))
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "veba-notify"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        if exc.code == 429 or exc.code >= 500:
            raise WebhookUnavailable(f"the webhook answered {exc.code} {detail}".strip()) from None
        raise WebhookRejected(
            f"the webhook refused the post: {exc.code} {detail}".strip()
        ) from None
