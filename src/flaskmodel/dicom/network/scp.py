"""The Storage SCP: the DICOM (DIMSE) half of the front door, built on pynetdicom.

Owns ``start_scp`` and the ``StorageScp`` it returns: a non-blocking association server that
answers C-ECHO and C-STORE and writes every received instance through an ``InstanceStore``.

What it accepts and refuses:

- **Presentation contexts**: Verification, and CT Image Storage, Enhanced CT Image Storage and
  Legacy Converted Enhanced CT Image Storage, each with every transfer syntax pydicom decodes here
  (``decodable_transfer_syntaxes``: implicit/explicit VR little endian, explicit big endian,
  deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE). Any other SOP class
  (MR, Secondary Capture, SR, ...) is refused the clean DICOM way: its presentation context is
  rejected (abstract syntax not supported), so the sender knows at association time and never
  sends it; nothing is stored.
- **Associations**: rejected permanently (A-ASSOCIATE-RJ result 1, source 1) when
  ``allowed_ae_titles`` is set and the calling AE title is not in it (reason 3, calling AE title
  not recognised), or when ``allowed_hosts`` is set and the peer address is in none of its
  addresses/CIDRs (reason 1, no reason given). Max PDU received: ``max_pdu_bytes``.
- **C-STORE statuses**: 0x0000 when stored or a duplicate of the same instance; otherwise the
  ``InstanceRefused`` status of ``flaskmodel.dicom.network.store`` (0xA900, 0xC000, 0x0111,
  0xA700, ...) with an Error Comment, and 0x0110 (processing failure) when ``on_stored`` raised.

``on_stored(StoredInstance)`` runs in the association's thread after the file is durable, also for
duplicates (``duplicate=True``); it must be thread-safe. If it raises, the C-STORE answers 0x0110
so the sender retries; the retry finds the file (a duplicate) and calls ``on_stored`` again.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from flaskmodel.dicom.network.store import (
    CT_STORAGE_SOP_CLASSES,
    InstanceStore,
    OnStored,
    decodable_transfer_syntaxes,
)
from flaskmodel.errors import InstanceRefused
from flaskmodel.settings.dicom import DicomSettings

logger = logging.getLogger(__name__)

PROCESSING_FAILURE = 0x0110
VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ fields (PS3.8 9.3.4): rejected-permanent, by the service user.
_REJECTED_PERMANENT = 0x01
_SERVICE_USER = 0x01
_NO_REASON_GIVEN = 0x01
# Error Comment (0000,0902) is LO: at most 64 characters.
_MAX_COMMENT = 64


def parse_networks(
    entries: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Addresses and CIDRs (``10.0.0.5``, ``10.1.0.0/16``, ``::1``) as networks; a host
    address is its own /32 or /128. Raises ``ValueError`` naming a bad entry."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"allowed_hosts: {entry!r} is not an address or CIDR") from exc
    return tuple(networks)


def host_allowed(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a peer address is in one of ``networks`` (an IPv4-mapped IPv6 peer counts as its
    IPv4 address); an empty list allows every host."""
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


@dataclass
class StorageScp:
    """A running Storage SCP; ``stop()`` aborts open associations and closes the port."""

    ae: Any
    server: Any
    host: str
    port: int

    def stop(self) -> None:
        self.ae.shutdown()
        logger.info("storage SCP on %s:%d stopped", self.host, self.port)


def start_scp(settings: DicomSettings, store: InstanceStore, on_stored: OnStored) -> StorageScp:
    """Start the Storage SCP on ``settings.host:port`` (port 0: a free one) in its own threads
    and return at once; ``.port`` is the port it listens on."""
    networks = parse_networks(settings.allowed_hosts)
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.require_calling_aet = list(settings.allowed_ae_titles)
    syntaxes = list(decodable_transfer_syntaxes())
    ae.add_supported_context(VERIFICATION)
    for sop_class in CT_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)

    def on_requested(event: Any) -> None:
        address = str(event.assoc.requestor.address)
        if host_allowed(address, networks):
            return
        logger.warning(
            "association from %s (AE %r) rejected: host not in allowed_hosts",
            address,
            event.assoc.requestor.ae_title,
        )
        # pynetdicom checks is_rejected right after EVT_REQUESTED and skips negotiation.
        event.assoc.acse.send_reject(_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON_GIVEN)
        event.assoc.is_rejected = True
        event.assoc.kill()

    def on_store(event: Any) -> int | Dataset:
        return _handle_store(event, store, on_stored)

    handlers: list[Any] = [
        (evt.EVT_REQUESTED, on_requested),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_C_STORE, on_store),
    ]
    server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers)
    if server is None:  # only a blocking start returns nothing
        raise RuntimeError("pynetdicom did not return the association server")
    port = int(server.server_address[1])
    logger.info(
        "storage SCP %s listening on %s:%d (%d transfer syntaxes)",
        settings.ae_title,
        settings.host,
        port,
        len(syntaxes),
    )
    return StorageScp(ae=ae, server=server, host=settings.host, port=port)


def _handle_echo(event: Any) -> int:
    return 0x0000


def _handle_store(event: Any, store: InstanceStore, on_stored: OnStored) -> int | Dataset:
    calling = str(event.assoc.requestor.ae_title).strip()
    try:
        # As sent: preamble, file meta built from the request, the data set's own bytes.
        stored = store.store_bytes(event.encoded_dataset(include_meta=True), source=calling)
    except InstanceRefused as exc:
        logger.warning("C-STORE from %s refused (0x%04X): %s", calling, exc.dicom_status, exc)
        return _status(exc.dicom_status, exc.message)
    logger.info(
        "C-STORE from %s: %s %s (series %s)",
        calling,
        "duplicate" if stored.duplicate else "stored",
        stored.sop_instance_uid,
        stored.series_instance_uid,
    )
    try:
        on_stored(stored)
    except Exception:  # the file is durable; a failure status makes the sender retry
        logger.exception("on_stored failed for %s", stored.sop_instance_uid)
        return _status(PROCESSING_FAILURE, "stored, but could not be registered; retry")
    return 0x0000


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # LO: printable characters without backslash.
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in comment)
    status.ErrorComment = text[:_MAX_COMMENT]
    return status
