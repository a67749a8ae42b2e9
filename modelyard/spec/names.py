"""Names that a model gets outside modelyard, in one place: the renderer (modelyard/deploy/) names each model's
Kubernetes Service with `service_name`, and the gateway (modelyard/gateway/discovery.py) finds the model's replicas
by the same name, so the two cannot drift apart; and the names of the Service's ports on which the gateway finds a
replica's KV events (vLLM's ZMQ PUB and its replay ROUTER)."""

from __future__ import annotations

import hashlib
import re

SERVICE_PREFIX = "modelyard-"
KV_EVENTS_PORT_NAME = "kv-events"
KV_REPLAY_PORT_NAME = "kv-replay"
DNS_LABEL_MAX = 63  # a Service's name is an RFC 1035 label: [a-z]([-a-z0-9]*[a-z0-9])?, at most 63 characters
HASH_CHARS = 8
_DNS_SAFE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_UNSAFE_RUN = re.compile(r"[^a-z0-9]+")


def service_name(model_name: str) -> str:
    """The name of the model's Service: `modelyard-<name>` when the name is already DNS-safe and short enough;
    otherwise its DNS-safe spelling (lowercased, every other run of characters one '-', cut to fit) and 8 hex
    digits of the sha256 of the name as given, so that two models never share a Service ("Chat" and "chat",
    "qwen2.5" and "qwen2-5")."""
    plain = SERVICE_PREFIX + model_name
    if _DNS_SAFE.match(model_name) and len(plain) <= DNS_LABEL_MAX:
        return plain
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:HASH_CHARS]
    safe = _UNSAFE_RUN.sub("-", model_name.lower()).strip("-")
    room = DNS_LABEL_MAX - len(SERVICE_PREFIX) - HASH_CHARS - 1
    safe = safe[:room].rstrip("-")
    return f"{SERVICE_PREFIX}{safe}-{digest}" if safe else f"{SERVICE_PREFIX}{digest}"
