"""DIMSE: C-FIND, then C-MOVE (to a storage SCP of our own) or C-GET, with pynetdicom."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medrobust.data.sources.base import Item, Rejected, SourceError
from medrobust.data.sources.pacs.query import PacsInstance, is_loopback

log = logging.getLogger(__name__)

#: Proposed for each storage SOP class in a C-GET, so no object has to be transcoded.
GET_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5",     # RLE lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired)
)
MAX_CONTEXTS = 128


class DimseClient:
    """C-FIND, then C-MOVE (to a storage SCP of our own) or C-GET, one series at a time.

    Received objects are written to a private temporary folder that :meth:`close` deletes.

    Args:
        cfg: ``data.pacs`` (:class:`~medrobust.data.sources.pacs.PacsConfig`): host, port, AE titles,
            retrieval, move port and timeout.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.where = f"{cfg.host}:{cfg.port}"
        self._tmp: Path | None = None
        self._received: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._server: Any = None

    # -- associations -----------------------------------------------------------------------------
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.calling_aet)
        t = float(self.cfg.timeout_s)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        return ae

    def _associate(self, ae: Any, **kwargs: Any) -> Any:
        from pynetdicom import evt

        # What the transport saw, from pynetdicom's notification events: when the peer rejects and
        # closes at once, pynetdicom can see the closed socket before it reads the A-ASSOCIATE-RJ
        # already received, and then reports neither is_rejected nor a reason.
        seen: dict[str, Any] = {}
        watch = [(evt.EVT_CONN_OPEN, lambda event: seen.setdefault("open", True)),
                 (evt.EVT_PDU_RECV, lambda event: seen.setdefault("pdu", type(event.pdu).__name__))]
        kwargs["evt_handlers"] = [*kwargs.get("evt_handlers", []), *watch]
        assoc = ae.associate(self.cfg.host, int(self.cfg.port), ae_title=self.cfg.called_aet, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected or seen.get("pdu") == "A_ASSOCIATE_RJ":
            raise SourceError(
                f"the PACS at {self.where} rejected the association (called AE title {self.cfg.called_aet!r}, "
                f"calling AE title {self.cfg.calling_aet!r}); check data.pacs.called_aet and data.pacs.calling_aet, "
                "and that the PACS knows our AE title"
            )
        if seen.get("pdu") == "A_ABORT_RQ":
            raise SourceError(
                f"the PACS at {self.where} aborted the association request (calling AE title "
                f"{self.cfg.calling_aet!r}); check data.pacs.calling_aet and that the PACS allows it"
            )
        if seen.get("open"):
            raise SourceError(
                f"the PACS at {self.where} accepted the connection but did not answer the association request "
                f"within {self.cfg.timeout_s:g} s; check that data.pacs.host and data.pacs.port name a DICOM "
                "service (not, say, its web port) and data.pacs.timeout_s"
            )
        raise SourceError(
            f"cannot reach the PACS at {self.where} (no DICOM association within {self.cfg.timeout_s:g} s); check "
            "data.pacs.host and data.pacs.port and that the server is running"
        )

    def _responses(self, responses: Any, what: str, assoc: Any) -> Iterator[tuple[int, Any]]:
        """(status code, identifier) of each DIMSE response; raises :class:`SourceError` when the
        association was lost (pynetdicom then yields an empty status, and marks an abort only after)."""
        lost = False
        for status, identifier in responses:
            if not status:
                lost = True
                continue
            yield int(status.Status), identifier
        if not lost:
            return
        settle = time.monotonic() + 2.0  # the reactor thread records the abort a moment later
        while assoc.is_established and not assoc.is_aborted and time.monotonic() < settle:
            time.sleep(0.01)
        if assoc.is_aborted:
            raise SourceError(
                f"the PACS at {self.where} aborted the association during {what}; it may not know or allow our "
                f"calling AE title {self.cfg.calling_aet!r}: register it in the PACS (Orthanc: DicomModalities) "
                "or check data.pacs.calling_aet"
            )
        raise SourceError(f"the PACS at {self.where} stopped answering during {what} (no answer within "
                          f"{self.cfg.timeout_s:g} s; data.pacs.timeout_s)")

    # -- query ------------------------------------------------------------------------------------
    def find(self, study_keys: dict[str, str], series_keys: dict[str, str],
             instance_keys: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
        """Study Root C-FIND at STUDY, SERIES and IMAGE level on one association, each with its filter keys.

        Args:
            study_keys: filters sent with the STUDY query.
            series_keys: filters sent with each SERIES query.
            instance_keys: filters sent with each IMAGE query.

        Returns:
            One (study UID, series UID, InstanceNumber, SOP instance UID, SOP class UID) row per instance.

        Raises:
            SourceError: the association is rejected, cannot be made, or is lost, or a C-FIND fails.
        """
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae)
        rows = []
        try:
            for study in self._cfind(assoc, "STUDY", {"StudyInstanceUID": "", **study_keys}):
                st = str(study.get("StudyInstanceUID", ""))
                series_q = {"StudyInstanceUID": st, "SeriesInstanceUID": "", **series_keys}
                for series in self._cfind(assoc, "SERIES", series_q):
                    se = str(series.get("SeriesInstanceUID", ""))
                    inst_q = {"StudyInstanceUID": st, "SeriesInstanceUID": se, "SOPInstanceUID": "",
                              "SOPClassUID": "", "InstanceNumber": "", **instance_keys}
                    for inst in self._cfind(assoc, "IMAGE", inst_q):
                        sop = str(inst.get("SOPInstanceUID", ""))
                        if st and se and sop:
                            rows.append((st, se, str(inst.get("InstanceNumber", "") or ""), sop,
                                         str(inst.get("SOPClassUID", "") or "")))
        finally:
            if assoc.is_established:
                assoc.release()
        return rows

    def _cfind(self, assoc: Any, level: str, keys: dict[str, str]) -> list[Any]:
        from pydicom import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        query = Dataset()
        query.QueryRetrieveLevel = level
        for k, v in keys.items():
            setattr(query, k, v)
        found = []
        for code, identifier in self._responses(assoc.send_c_find(query, FIND), f"C-FIND at {level} level", assoc):
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    found.append(identifier)
            elif code != 0x0000:
                raise SourceError(f"C-FIND at {level} level failed at the PACS at {self.where} with status "
                                  f"0x{code:04X}; check data.pacs.filters (keys the PACS supports at that level)")
        return found

    # -- retrieval --------------------------------------------------------------------------------
    def _folder(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="medrobust-pacs-"))  # mode 700
        return self._tmp

    def _on_store(self, event: Any) -> int:
        """C-STORE handler: write the dataset as received (no decode/re-encode) with file meta."""
        try:
            sop = str(event.request.AffectedSOPInstanceUID)
            with self._lock:
                self._count += 1
                path = self._folder() / f"{self._count:08d}.dcm"
            path.write_bytes(event.encoded_dataset(include_meta=True))
            with self._lock:
                self._received[sop] = path
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - any failure must become a DIMSE status, not kill the SCP
            log.warning("could not store a received instance (%s)", type(exc).__name__)
            return 0xA700  # out of resources

    def start_scp(self) -> None:
        """Start the storage SCP that receives C-MOVE sub-operations (once).

        It listens on ``data.pacs.move_port``, on 127.0.0.1 when the PACS is on this machine, else on all
        interfaces; a second call does nothing.

        Raises:
            SourceError: the port cannot be bound.
        """
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        if self._server is not None:
            return
        ae = self._ae()
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        bind = "127.0.0.1" if is_loopback(self.cfg.host) else ""
        try:
            self._server = ae.start_server((bind, int(self.cfg.move_port)), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise SourceError(f"cannot listen on port {self.cfg.move_port} for C-MOVE ({exc.strerror}); set "
                              "data.pacs.move_port to a free port that the PACS knows for "
                              f"{self.cfg.calling_aet!r}, or use data.pacs.retrieve: get") from None
        port = self._server.server_address[1]
        log.info("storage SCP %s listening on %s:%d for C-MOVE", self.cfg.calling_aet, bind or "*", port)

    def _move(self, study: str, series: str) -> int:
        from pydicom import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        self.start_scp()
        ae = self._ae()
        ae.add_requested_context(MOVE)
        assoc = self._associate(ae)
        ident = Dataset()
        ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SeriesInstanceUID = "SERIES", study, series
        code = 0x0000
        try:
            for code, _ in self._responses(assoc.send_c_move(ident, self.cfg.calling_aet, MOVE), "C-MOVE", assoc):
                pass
        finally:
            if assoc.is_established:
                assoc.release()
        if code == 0xA801:
            raise SourceError(
                f"the PACS at {self.where} does not know the C-MOVE destination {self.cfg.calling_aet!r} "
                "(status 0xA801): register it in the PACS with this machine's address and data.pacs.move_port "
                "(Orthanc: DicomModalities), or use data.pacs.retrieve: get"
            )
        return code

    def _get(self, study: str, series: str, sop_classes: list[str]) -> int:
        from pydicom import Dataset
        from pynetdicom import StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        ae = self._ae()
        ae.add_requested_context(GET)
        room = MAX_CONTEXTS - 1
        if sop_classes:
            if len(sop_classes) > room:
                log.warning("%d storage SOP classes in one series; C-GET proposes the first %d", len(sop_classes), room)
                sop_classes = sop_classes[:room]
            per_class = max(1, min(len(GET_TRANSFER_SYNTAXES), room // len(sop_classes)))
            for uid in sop_classes:
                for ts in GET_TRANSFER_SYNTAXES[:per_class]:
                    ae.add_requested_context(uid, ts)
        else:  # the PACS did not report SOP classes: the common ones, default transfer syntaxes
            sop_classes = [cx.abstract_syntax for cx in StoragePresentationContexts[:room]]
            for uid in sop_classes:
                ae.add_requested_context(uid)
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        ident = Dataset()
        ident.QueryRetrieveLevel, ident.StudyInstanceUID, ident.SeriesInstanceUID = "SERIES", study, series
        code = 0x0000
        try:
            for code, _ in self._responses(assoc.send_c_get(ident, GET), "C-GET", assoc):
                pass
        finally:
            if assoc.is_established:
                assoc.release()
        return code

    def items(self, instances: list[PacsInstance]) -> Iterator[Item]:
        """Retrieve series by series; yield an item per found instance (read from the temporary folder).

        Objects the PACS sends that the query did not find are deleted. An instance that was not
        received is still yielded; its ``read()`` raises :class:`Rejected` (``not_retrieved``).

        Args:
            instances: the instances to retrieve (:func:`~.query.ordinal_refs`). They are yielded series by
                series, in the order of each series' first instance; a series is retrieved just before its
                items are yielded.

        Yields:
            One ``dicom`` item per instance; its ``read()`` returns the file's bytes once and deletes it.

        Raises:
            SourceError: an association problem, or a C-MOVE destination the PACS does not know.
        """
        groups: dict[tuple[str, str], list[PacsInstance]] = {}
        for inst in instances:
            groups.setdefault((inst.study, inst.series), []).append(inst)
        how = "C-GET" if self.cfg.retrieve == "get" else "C-MOVE"
        for (study, series), members in groups.items():
            if self.cfg.retrieve == "get":
                code = self._get(study, series, sorted({i.sop_class for i in members if i.sop_class}))
            else:
                code = self._move(study, series)
            with self._lock:
                received, self._received = self._received, {}
            paths = {inst.sop: received.pop(inst.sop, None) for inst in members}
            for extra in received.values():  # sent but not in the query result (stored since): not ours
                extra.unlink(missing_ok=True)
            missing = sum(p is None for p in paths.values())
            if missing or code not in (0x0000, 0xB000):
                log.warning("%s of a series ended with status 0x%04X; %d of %d instances not received",
                            how, code, missing, len(members))
            for inst in members:
                yield Item(ref=inst.ref, kind="dicom", read=_reader(paths[inst.sop], how, code))

    def close(self) -> None:
        """Stop the storage SCP and delete the temporary folder with any objects not yet read."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _reader(path: Path | None, how: str, code: int) -> Callable[[], bytes]:
    """``read()`` of a received instance: returns its bytes once and deletes the file, so the disk
    holds only instances retrieved but not yet read (ingest may look ahead before reading)."""
    def read() -> bytes:
        if path is None:
            raise Rejected("not_retrieved", f"the PACS listed this instance but did not send it ({how} status "
                                            f"0x{code:04X})")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise RuntimeError("a PACS item was read twice (or after close()): its file is handed over on "
                               "the first read") from None
        path.unlink()
        return raw

    return read

