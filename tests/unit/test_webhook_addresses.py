"""Which addresses a webhook may reach: globally routable only, every IPv4 form inside IPv6 unwrapped."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from services.segmentation.campaigns.webhooks import WebhookPolicy, address_is_allowed, check_webhook_url
from shared.errors import InvalidRequest

POLICY = WebhookPolicy()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "::1", "::", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.100.100.200", "100.64.0.1", "198.18.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255",
    "240.0.0.1", "::127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1", "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    # NAT64 lies in ::/8, which Python counts as reserved: refused even when the IPv4 inside is public.
    "64:ff9b::808:808", "2001:0:4136:e378:8000:63bf:80ff:fffe", "ff02::1", "fe80::1", "fc00::1", "fe80::1%eth0",
])
def test_non_global_addresses_are_refused(address):
    assert address_is_allowed(address, POLICY) is False


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2002:5db8:d70e::1"])
def test_global_addresses_are_allowed(address):
    assert address_is_allowed(address, POLICY) is True


def test_operator_allowed_and_forbidden_networks():
    intranet = WebhookPolicy(allowed=tuple(ipaddress.ip_network(n) for n in ("10.20.0.0/16",)))
    assert address_is_allowed("10.20.1.2", intranet) is True
    assert address_is_allowed("10.21.1.2", intranet) is False
    blocked = WebhookPolicy(forbidden=(ipaddress.ip_network("8.8.8.0/24"),))
    assert address_is_allowed("8.8.8.8", blocked) is False


def fake_resolver(*addresses):
    def resolve(host, port, type=socket.SOCK_STREAM):
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
        return [(family(a), type, 6, "", (a, port)) for a in addresses]

    return resolve


def test_every_resolved_address_is_checked():
    with pytest.raises(InvalidRequest):
        check_webhook_url("https://hooks.example.com/x", POLICY, resolve=fake_resolver("93.184.215.14", "127.0.0.1"))


def test_the_checked_address_is_the_one_used():
    target = check_webhook_url("https://hooks.example.com:8443/x?a=1", POLICY,
                               resolve=fake_resolver("93.184.215.14"))
    assert (target.host, target.port, target.address, target.scheme) == ("hooks.example.com", 8443,
                                                                          "93.184.215.14", "https")
