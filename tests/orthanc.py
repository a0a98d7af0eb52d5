"""A real Orthanc PACS for tests: Debian's ``orthanc`` with the ``orthanc-dicomweb`` plugin,
started on free ports with its storage in a temporary folder.

``start_orthanc`` writes a JSON configuration (HTTP and DICOM ports, AE title ``PACS``, basic
auth for one user, called-AE checking on, DICOMweb at ``/dicom-web/``), starts ``/usr/sbin/Orthanc``
and returns once ``GET /system`` answers; ``stop_orthanc`` terminates it (then kills). The
``Orthanc`` object wraps the REST calls tests need: upload, lookup, tags and files of instances.
Importable by any test package (``from tests.orthanc import start_orthanc``).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests import procs

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "install the Debian packages: apt-get install orthanc orthanc-dicomweb"


@dataclass
class Orthanc:
    """A running Orthanc: where it listens and the REST helpers tests use."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    http_port: int
    dicom_port: int
    aet: str
    username: str
    password: str

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def log(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")[-4000:]

    def get(self, path: str) -> Any:
        response = requests.get(self.http_url + path, auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, path: Path) -> dict[str, Any]:
        """``POST /instances`` one DICOM file; Orthanc's answer (``ID``, ``ParentSeries``...)."""
        response = requests.post(
            self.http_url + "/instances", data=path.read_bytes(), auth=self.auth, timeout=30
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc's resources (``ID``, ``Type``, ``Path``) with this DICOM UID."""
        response = requests.post(
            self.http_url + "/tools/lookup", data=uid, auth=self.auth, timeout=30
        )
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def series(self) -> list[dict[str, Any]]:
        """Every series Orthanc holds, expanded (``MainDicomTags``, ``Instances``...)."""
        found: list[dict[str, Any]] = self.get("/series?expand")
        return found

    def series_instances(self, series_uid: str) -> list[dict[str, Any]]:
        """The instances (expanded) of the series with this SeriesInstanceUID."""
        ids = [r["ID"] for r in self.lookup(series_uid) if r["Type"] == "Series"]
        if not ids:
            return []
        found: list[dict[str, Any]] = self.get(f"/series/{ids[0]}/instances")
        return found

    def instance_ids(self, sop_instance_uid: str) -> list[str]:
        """Orthanc's ids of the instances with this SOPInstanceUID (one at most, or none)."""
        return [r["ID"] for r in self.lookup(sop_instance_uid) if r["Type"] == "Instance"]

    def tags(self, instance_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return found

    def file(self, instance_id: str) -> bytes:
        response = requests.get(
            f"{self.http_url}/instances/{instance_id}/file", auth=self.auth, timeout=30
        )
        response.raise_for_status()
        return response.content


def orthanc_config(
    workdir: Path, http_port: int, dicom_port: int, aet: str, username: str, password: str
) -> dict[str, Any]:
    storage = workdir / "storage"
    return {
        "Name": "flaskmodel-test",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        # Every REST and DICOMweb call needs the user: a wrong password must answer 401.
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        # An association addressed to another AE title is rejected (a permanent export error).
        "DicomCheckCalledAet": True,
        # Any calling AE may store (our exports come from `dicom.ae_title`).
        "DicomAlwaysAllowStore": True,
        # The same SOPInstanceUID sent twice keeps the first copy: re-sent SRs stay one instance.
        "OverwriteInstances": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def start_orthanc(
    workdir: Path,
    *,
    aet: str = "PACS",
    username: str = "flaskmodel",
    password: str = "pacs-secret",
    timeout: float = 30,
) -> Orthanc:
    """Start Orthanc on free ports with everything under ``workdir``; returns once it answers."""
    missing = [str(p) for p in (ORTHANC, DICOMWEB_PLUGIN) if not p.exists()]
    if missing:
        absent = ", ".join(missing)
        raise RuntimeError(f"Orthanc is not installed ({absent} missing): {INSTALL_HINT}")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = procs.free_port(), procs.free_port()
    while dicom_port == http_port:
        dicom_port = procs.free_port()
    config = workdir / "orthanc.json"
    config.write_text(
        json.dumps(orthanc_config(workdir, http_port, dicom_port, aet, username, password))
    )
    with (workdir / "orthanc.log").open("ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [str(ORTHANC), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    orthanc = Orthanc(proc, workdir, http_port, dicom_port, aet, username, password)

    def answers() -> bool:
        try:
            return requests.get(orthanc.http_url + "/system", auth=orthanc.auth, timeout=1).ok
        except requests.RequestException:
            return False

    try:
        procs.wait_for(answers, timeout, "Orthanc GET /system", proc)
    except (RuntimeError, TimeoutError):
        procs.stop(proc)
        raise RuntimeError(f"Orthanc did not start:\n{orthanc.log()}") from None
    return orthanc


def stop_orthanc(orthanc: Orthanc) -> None:
    """SIGTERM (Orthanc shuts down cleanly), SIGKILL after 30 s."""
    procs.stop(orthanc.proc)
