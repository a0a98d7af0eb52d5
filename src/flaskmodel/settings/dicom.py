"""The ``dicom`` section: the DICOM front door (Storage SCP, STOW-RS), routing of complete series
to models, DICOMweb sources to pull series from, and destinations for the results (DICOM SR)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from flaskmodel.schemas import ENDPOINT_NAME_PATTERN
from flaskmodel.settings.sections import Section

#: An AE title: 1–16 characters of the default character repertoire, no backslash.
AE_TITLE_PATTERN = r"^[ -\[\]-~]{1,16}$"


class DicomRoute(Section):
    """A routing rule: a complete series that matches every condition given starts a job.

    Conditions are regular expressions matched (``re.search``, case-insensitive) against the
    series' first instance; an empty condition matches anything. Rules are tried in order and
    the first match wins."""

    model: str
    """Model that classifies the series."""
    modality: str | None = "^CT$"
    """Regex on Modality (0008,0060)."""
    body_part: str | None = None
    """Regex on BodyPartExamined (0018,0015)."""
    series_description: str | None = None
    """Regex on SeriesDescription (0008,103E)."""
    calling_ae_title: str | None = None
    """Regex on the AE title that sent the series (``STOW-RS`` for DICOMweb uploads)."""
    min_instances: int = Field(default=1, ge=1)
    """Series with fewer instances are not routed (e.g. a scout)."""
    postprocess: str | None = None
    """Post-processor for the job (the model's default when empty)."""
    exports: list[str] = Field(default_factory=list)
    """Destinations (names in `dicom.destinations`) the job's DICOM SR is sent to."""

    @field_validator("modality", "body_part", "series_description", "calling_ae_title")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)  # re.error is a ValueError: the message names the pattern
        return value


class DicomWebSource(Section):
    """A DICOMweb server workers may pull series from (WADO-RS), named in job requests."""

    url: str
    """Base URL of its DICOMweb API (e.g. `http://pacs:8042/dicom-web`)."""
    username: str | None = None
    """HTTP basic auth user (with `password`)."""
    password: SecretStr | None = None
    """HTTP basic auth password."""
    token: SecretStr | None = None
    """Bearer token (instead of basic auth)."""
    timeout_seconds: float = Field(default=60.0, gt=0)
    """Timeout of each HTTP request to the source."""


class DicomDestination(Section):
    """Where a job's DICOM SR goes: a DICOM AE by C-STORE, or a DICOMweb server by STOW-RS."""

    kind: Literal["dimse", "dicomweb"]
    """`dimse`: C-STORE to a DICOM AE; `dicomweb`: STOW-RS to a DICOMweb server."""
    host: str | None = None
    """C-STORE: the AE's host."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """C-STORE: the AE's port."""
    ae_title: str | None = Field(default=None, pattern=AE_TITLE_PATTERN)
    """C-STORE: the called AE title."""
    url: str | None = None
    """STOW-RS: base URL of the DICOMweb API."""
    username: str | None = None
    """STOW-RS: HTTP basic auth user (with `password`)."""
    password: SecretStr | None = None
    """STOW-RS: HTTP basic auth password."""
    token: SecretStr | None = None
    """STOW-RS: bearer token (instead of basic auth)."""
    timeout_seconds: float = Field(default=60.0, gt=0)
    """Timeout of an association or HTTP request to the destination."""

    @model_validator(mode="after")
    def _complete(self) -> DicomDestination:
        if self.kind == "dimse" and not (self.host and self.port and self.ae_title):
            raise ValueError("a dimse destination needs host, port and ae_title")
        if self.kind == "dicomweb" and not self.url:
            raise ValueError("a dicomweb destination needs url")
        return self


class DicomSettings(Section):
    enabled: bool = True
    """Run the DICOM front door (`flaskmodel dicom`) as part of `flaskmodel up`."""
    ae_title: str = Field(default="FLASKMODEL", pattern=AE_TITLE_PATTERN)
    """AE title of the Storage SCP (and the calling AE title of exports)."""
    host: str = "127.0.0.1"
    """Address the Storage SCP listens on (`0.0.0.0` to accept modalities on the network)."""
    port: int = Field(default=11112, ge=0, le=65535)
    """DICOM port of the Storage SCP (0 picks a free one)."""
    http_host: str = "127.0.0.1"
    """Address of the front door's HTTP listener (STOW-RS); nginx proxies `/dicomweb/` to it."""
    http_port: int = Field(default=8104, ge=0, le=65535)
    """Port of the front door's HTTP listener (STOW-RS) when no unix socket is used."""
    allowed_ae_titles: list[str] = Field(default_factory=list)
    """Calling AE titles allowed to associate (empty: any)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Addresses or CIDRs allowed to associate (empty: any)."""
    max_pdu_bytes: int = Field(default=1024 * 1024, ge=4096)
    """Largest P-DATA PDU accepted."""
    max_stow_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    """Largest STOW-RS request body; larger ones are refused with 413."""
    stable_seconds: float = Field(default=10.0, gt=0)
    """A received series with no new instance for this long is complete and is routed."""
    routes: list[DicomRoute] = Field(default_factory=lambda: [DicomRoute(model="ct_classifier")])
    """Routing rules for received series (JSON list); the default sends every CT series to
    `ct_classifier`; `[]`: received series are only stored."""
    sources: dict[str, DicomWebSource] = Field(default_factory=dict)
    """DICOMweb sources by name (JSON object); a series job names one in `source`."""
    destinations: dict[str, DicomDestination] = Field(default_factory=dict)
    """Destinations of DICOM SR results by name (JSON object)."""
    export_attempts: int = Field(default=5, ge=1)
    """Tries of each export before it is marked FAILED."""
    export_backoff_seconds: float = Field(default=2.0, gt=0)
    """First wait between export tries; doubles on each retry."""

    @field_validator("sources", "destinations")
    @classmethod
    def _names(cls, value: dict[str, object]) -> dict[str, object]:
        for name in value:
            if not re.match(ENDPOINT_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not a valid name ({ENDPOINT_NAME_PATTERN})")
        return value

    @model_validator(mode="after")
    def _exports_exist(self) -> DicomSettings:
        for route in self.routes:
            missing = [name for name in route.exports if name not in self.destinations]
            if missing:
                raise ValueError(f"route for model {route.model!r} exports to unknown {missing}")
        return self
