"""``pacs``: DICOM instances from a PACS, by DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET).

Settings live in ``data.pacs`` (:class:`PacsConfig`); labels come from
``data.labels_csv``, keyed by ``SOPInstanceUID`` exactly as for ``dicom_folder``, so a folder and a
PACS holding the same files give the same dataset.

Query. ``data.pacs.filters`` holds DICOM keywords and values (``{Modality: MG, StudyDate:
20200101-20201231}``). Each key is sent at the level it belongs to: series attributes such as
``Modality`` or ``BodyPartExamined`` filter series, instance attributes such as ``SOPClassUID``
filter instances, and everything else (``StudyDate``, ``PatientID``, ``ModalitiesInStudy``,
``AccessionNumber``...) filters studies. The whole hierarchy (study -> series -> instance) is
queried when the source is opened, so refused credentials, an unreachable server or a filter that
matches nothing stop ingest before anything is written.

DICOMweb (``protocol: dicomweb``, ``url`` = the service root, e.g. ``http://host:8042/dicom-web``)
goes through the `dicomweb-client <https://github.com/ImagingDataCommons/dicomweb-client>`_ library,
which does the HTTP and the multipart decoding: QIDO-RS searches for studies, series and instances
(paged with ``limit``/``offset``), then one WADO-RS retrieval per instance that accepts any transfer
syntax (``transfer-syntax=*``), so the object arrives as stored, and its bytes are handed on exactly
as the server sent them. Each instance is fetched only when its item is read, so one image is held
at a time. A request that gets no answer (or HTTP 408/429/503/504) is tried three times in all, with
sub-second waits. Credentials come from the environment only: ``MEDROBUST_PACS_USER`` +
``MEDROBUST_PACS_PASSWORD`` (HTTP basic) or ``MEDROBUST_PACS_TOKEN`` (bearer; wins when both are set).

DIMSE (``protocol: dimse``; ``host``, ``port``, ``called_aet``, ``calling_aet``): Study Root C-FIND
at STUDY, SERIES and IMAGE level, then one retrieval per series:

* ``retrieve: move``: C-MOVE to ``calling_aet``; a storage SCP of our own listens on ``move_port``
  (0: any free port) — on 127.0.0.1 when the PACS is on this machine, otherwise on all interfaces.
  The PACS must know ``calling_aet`` at this machine's address and that port (Orthanc:
  ``DicomModalities``).
* ``retrieve: get``: C-GET on the same association (SCP role negotiated for the storage SOP classes
  the C-FIND reported, each with the common transfer syntaxes, so compressed objects are not
  transcoded).

Received objects are written, byte for byte as sent (preamble and file meta added), to a private
temporary folder (mode 700) that :meth:`PacsSource.close` deletes. An item's ``read()`` hands its
file over (returns the bytes and deletes the file), so the disk holds only the instances retrieved
but not yet read: ingest may look ahead a few hundred items before it reads.

Identifiers: UIDs travel in queries and URLs but never reach a log line, an error message or an
output. ``ref`` is ``pacs:study-3/series-1/ima-<pseudonym>``: ordinals plus the keyed-hash image
pseudonym that is also the manifest's ``image_id``. The loggers of urllib3, dicomweb-client and
pynetdicom, which would print URLs, UIDs and query identifiers, are raised to WARNING unless they
were configured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from medrobust.config import StrictModel
from medrobust.data.deid import load_key
from medrobust.data.sources.base import SOURCES, Item, LabelTable, SourceError
from medrobust.data.sources.folder import LabelledSource
from medrobust.data.sources.pacs.dicomweb import DicomWebClient
from medrobust.data.sources.pacs.dimse import DimseClient
from medrobust.data.sources.pacs.query import describe_filters, ordinal_refs, quiet_identifier_loggers, split_filters

if TYPE_CHECKING:
    from medrobust.data.config import DataConfig

log = logging.getLogger(__name__)


class PacsConfig(StrictModel):
    """``data.pacs``: a PACS over DICOMweb (QIDO-RS + WADO-RS) or DIMSE (C-FIND + C-MOVE/C-GET via pynetdicom).

    Credentials never live here: DICOMweb reads ``MEDROBUST_PACS_USER`` / ``MEDROBUST_PACS_PASSWORD``
    (HTTP basic) or ``MEDROBUST_PACS_TOKEN`` (bearer) from the environment.
    """

    protocol: Literal["dicomweb", "dimse"] = "dicomweb"
    url: str = ""                                  # DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web
    filters: dict[str, str] = {}                   # QIDO / C-FIND keys, each sent at its level (study/series/instance)
    host: str = "127.0.0.1"                        # DIMSE peer
    port: int = Field(4242, ge=0, le=65535)
    called_aet: str = "ORTHANC"
    calling_aet: str = "MEDROBUST"
    retrieve: Literal["move", "get"] = "move"      # DIMSE retrieval: C-MOVE to our own storage SCP, or C-GET
    move_port: int = Field(0, ge=0, le=65535)      # our storage SCP's port for C-MOVE (0: a free port)
    timeout_s: float = Field(60.0, ge=1.0, le=3600.0)


@SOURCES.register("pacs", dicom="all")
class PacsSource(LabelledSource):
    """DICOM instances from a PACS (see the module docstring); labels from ``data.labels_csv``.

    Args:
        data: the ``data`` section; ``data.pacs`` and ``data.labels_csv`` are used.
        labels_csv: overrides ``data.labels_csv``.

    Attributes:
        client: the :class:`~.dicomweb.DicomWebClient` or :class:`~.dimse.DimseClient` in use.
        instances: every instance the query found, sorted, with its non-identifying ``ref``.

    Raises:
        SourceError: bad settings, refused credentials, an unreachable PACS, or no instance matches.
    """

    name = "pacs"

    def __init__(self, data: DataConfig, labels_csv: str | Path | None = None, **_: Any) -> None:
        quiet_identifier_loggers()
        cfg = data.pacs
        self.cfg = cfg
        self.table = LabelTable.from_path(labels_csv or data.labels_csv, encoding=data.labels_encoding)
        study_keys, series_keys, instance_keys = split_filters(dict(cfg.filters))
        self.client: DicomWebClient | DimseClient
        if cfg.protocol == "dicomweb":
            self.client = DicomWebClient(cfg.url, float(cfg.timeout_s))
            where = f"the DICOMweb service at {self.client.shown} (data.pacs.url)"
        else:
            self.client = DimseClient(cfg)
            where = f"the PACS at {cfg.host}:{cfg.port} (data.pacs.host/port, AE title {cfg.called_aet!r})"
        try:
            rows = self.client.find(study_keys, series_keys, instance_keys)
            if isinstance(self.client, DimseClient) and cfg.retrieve == "move" and rows:
                self.client.start_scp()  # a busy move_port fails now, before ingest writes anything
        except BaseException:
            self.client.close()
            raise
        if not rows:
            self.client.close()
            raise SourceError(f"{where} holds no instances matching data.pacs.filters "
                              f"({describe_filters(dict(cfg.filters))}); check data.pacs.filters")
        self.instances = ordinal_refs(rows, load_key())
        log.info("pacs: %d instances in %d series of %d studies (%s)", len(self.instances),
                 len({(i.study, i.series) for i in self.instances}), len({i.study for i in self.instances}),
                 cfg.protocol)

    def items(self) -> Iterator[Item]:
        """One ``dicom`` item per instance found: fetched by WADO-RS on read, or retrieved series by series (DIMSE)."""
        if isinstance(self.client, DicomWebClient):
            client = self.client
            for inst in self.instances:
                yield Item(ref=inst.ref, kind="dicom", read=lambda inst=inst: client.fetch(inst))
        else:
            yield from self.client.items(self.instances)

    def close(self) -> None:
        """Close the client (HTTP session, or storage SCP and temporary folder)."""
        self.client.close()


__all__ = ["PacsConfig", "PacsSource"]
