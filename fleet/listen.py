"""Serving the fleet to other machines: the addresses `fleet up --listen` takes, and the join kit.

`fleet up --listen ADDR[,ADDR]` (or FLEET_LISTEN) makes the fleet's Redis also listen on those
addresses of this machine, TLS only, with a certificate of the fleet's own CA
(fleet.drivers.tls), and writes a join kit, FLEET_HOME/join: the CA certificate, a 0600 file
with the node URL (the password inside, the CA named relative to the kit) and, when the fleet
runs its own S3, a 0600 copy of its credentials. Copied to another machine, the kit is all a
node there needs: `FLEET_JOIN=<kit> fleet worker --node-id NAME` (`joined`). No secret is on a
command line or in an environment: FLEET_JOIN holds a path.

An address is an IP address of this machine, or a name that resolves to some (the
certificate then holds the name too, so nodes may use it). Loopback is always served and
needs no naming; a wildcard (0.0.0.0) is refused: the certificate names each address nodes
verify, and an operator says which networks the fleet is served on.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from fleet.errors import FleetError, SpecError

if TYPE_CHECKING:
    from fleet.settings import Settings

KIT_DIR = "join"  # under FLEET_HOME
CA_FILE = "ca.pem"
URL_FILE = "redis.url"
S3_FILE = "s3.credentials"
LOOPBACK = "127.0.0.1"
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Listen:
    """Addresses resolved: `ips` to bind and name in the certificate, `names` (DNS) to name in
    it, `host` the one the kit's URL uses (the first given)."""

    ips: tuple[str, ...]
    names: tuple[str, ...]
    host: str


def split_addresses(value: Any) -> Any:
    """FLEET_LISTEN as people write it (`a,b`) or as a driver passes settings on (JSON list)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[\"", "[]")):  # not "[fd00::1]", an IPv6 address in brackets
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("not a JSON list of addresses") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def check_syntax(addresses: list[str]) -> list[str]:
    """Each an IP address (not loopback, not a wildcard) or a host name; duplicates dropped.
    Pure: ValueError saying which one and why."""
    seen: list[str] = []
    for address in addresses:
        bare = address.strip().removeprefix("[").removesuffix("]")
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            bare = bare.removesuffix(".").lower()  # as a certificate names it
            if len(bare) > 253 or not all(_LABEL.fullmatch(x) for x in bare.split(".")):
                raise ValueError(f"{address!r} is not an IP address or a host name") from None
        else:
            if ip.is_unspecified:
                raise ValueError(f"{address} listens everywhere; name the addresses other "
                                 "machines reach this one at")
            if ip.is_loopback:
                raise ValueError(f"{address} is loopback, which the fleet always serves; name "
                                 "an address other machines reach this one at")
            bare = str(ip)
        if bare not in seen:
            seen.append(bare)
    return seen


def parse_addresses(text: str, field: str) -> list[str]:
    """`ADDR[,ADDR]` checked (`check_syntax`); a one-line SpecError naming `field`."""
    try:
        addresses = check_syntax(split_addresses(text))
    except ValueError as exc:
        raise SpecError(field, str(exc)) from None
    if not addresses:
        raise SpecError(field, "expected ADDR[,ADDR]: IP addresses or names of this machine")
    return addresses


def resolve(addresses: list[str], field: str) -> Listen:
    """The addresses as this machine serves them: names resolved, every IP one of this
    machine's (a socket binds to it). A one-line SpecError naming `field` otherwise."""
    ips: list[str] = []
    names: list[str] = []
    for address in addresses:
        try:
            found = [str(ipaddress.ip_address(address))]
        except ValueError:
            names.append(address)
            found = _resolve_name(address, field)
        for ip in found:
            _check_local(ip, address, field)
            if ip not in ips:
                ips.append(ip)
    return Listen(tuple(ips), tuple(names), addresses[0])


def _resolve_name(name: str, field: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SpecError(field, f"cannot resolve {name}: {exc}") from None
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    usable = [ip for ip in found if not ipaddress.ip_address(ip.split("%")[0]).is_loopback]
    if not usable:
        raise SpecError(field, f"{name} resolves to loopback only ({', '.join(found)}); name an "
                               "address other machines reach this one at")
    return usable


def _check_local(ip: str, address: str, field: str) -> None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as exc:
            where = ip if ip == address else f"{ip} (from {address})"
            raise SpecError(field, f"{where} is not an address of this machine "
                                   f"({exc.strerror}; `ip addr` lists them)") from None


def listening(settings: Settings, text: str | None, driver: str) -> Settings:
    """The settings `fleet up` runs with: --listen's addresses (else FLEET_LISTEN's), checked
    before anything starts."""
    field = "--listen" if text is not None else "FLEET_LISTEN"
    addresses = parse_addresses(text, field) if text is not None else settings.listen
    if not addresses:
        return settings
    if driver != "local":
        raise SpecError(field, f"the {driver} driver does not serve other machines; use the "
                               "local driver (a Swarm reaches its own Redis service)")
    if importlib.util.find_spec("cryptography") is None:
        raise SpecError(field, "serving other machines needs the `cryptography` package "
                               "(its TLS certificate): pip install 'fleet[listen]'")
    resolve(addresses, field)
    return settings.model_copy(update={"listen": addresses})


def kit_dir(settings: Settings) -> Path:
    return settings.home_dir / KIT_DIR


def hint(settings: Settings) -> str | None:
    """The line `fleet up` prints for the operator when it listens, else None."""
    if not settings.listen:
        return None
    kit = kit_dir(settings)
    return (f"other machines join with the kit {kit} (new at each `fleet up`): copy it to "
            f"one, e.g. `scp -rp {kit} HOST:` (its home folder), and run there "
            f"`FLEET_JOIN=$HOME/{KIT_DIR} fleet worker --node-id NAME`")


def url_with_ca(url: str, ca: Path) -> str:
    """`url` with its ssl_ca_certs, when relative, made relative to `ca`'s folder (the kit's,
    wherever it was copied to). Pure."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    fixed = [(k, str(ca.parent / v) if k == "ssl_ca_certs" and not Path(v).is_absolute() else v)
             for k, v in query]
    return urlunsplit(parts._replace(query=urlencode(fixed, quote_via=quote, safe="/")))


def joined(settings: Settings) -> Settings:
    """The settings of a node started with FLEET_JOIN: the kit's URL (its CA found in the kit)
    and S3 credentials; the settings as they are without FLEET_JOIN."""
    if settings.join is None:
        return settings
    if settings.redis_url or settings.redis_url_file:
        raise FleetError("FLEET_JOIN: FLEET_REDIS_URL or FLEET_REDIS_URL_FILE names a fleet "
                         "too; a node joins one: unset them")
    kit = settings.join.expanduser().resolve()
    if not (kit / URL_FILE).is_file() or not (kit / CA_FILE).is_file():
        raise FleetError(f"FLEET_JOIN: {kit} is not a join kit (no {URL_FILE} and {CA_FILE}); "
                         f"copy FLEET_HOME/{KIT_DIR} from the machine that ran "
                         "`fleet up --listen`")
    from fleet.statefile import read_secret_file

    url = url_with_ca(read_secret_file(kit / URL_FILE, "FLEET_JOIN"), kit / CA_FILE)
    update: dict[str, Any] = {"redis_url": url}
    if settings.s3_credentials_file is None and (kit / S3_FILE).is_file():
        # the fleet's S3 serves HTTPS with the certificate Redis has, of the kit's CA
        update.update(s3_credentials_file=kit / S3_FILE, s3_ca_file=kit / CA_FILE)
    return settings.model_copy(update=update)
