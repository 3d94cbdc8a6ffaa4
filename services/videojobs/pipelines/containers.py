"""Which container formats videojobs opens, and how one is recognised.

An upload is a program for the demuxer, so the demuxer is never left to
guess. job-service identifies the format from the first bytes of an upload
(never from the file name), records it with the job, and every later open
(the upload check, the worker's pipelines) forces exactly that demuxer. Only
single-file containers are allowed: formats that open further files or URLs
(HLS and DASH playlists, concat lists, image sequences) would let an upload
read other jobs' videos or reach the network, and are refused.

Recognition is by signature, the same evidence FFmpeg's own probes use, but
strict: a signature must sit at the start of the file (an MPEG-TS body behind
a playlist header is a playlist, not a transport stream). This module imports
nothing heavy, so job-service can check an upload without loading PyAV.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes needed to recognise every allowed format (ten 204-byte TS packets).
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class ContainerFormat:
    """An allowed container: our stable name, FFmpeg's demuxer, an extension."""

    name: str
    demuxer: str
    extension: str
    description: str


ALLOWED_FORMATS: dict[str, ContainerFormat] = {
    f.name: f
    for f in (
        ContainerFormat("mp4", "mov", ".mp4", "ISO BMFF / QuickTime (.mp4, .mov, .m4v, .3gp)"),
        ContainerFormat("matroska", "matroska", ".mkv", "Matroska / WebM (.mkv, .webm)"),
        ContainerFormat("avi", "avi", ".avi", "AVI"),
        ContainerFormat("mpegts", "mpegts", ".ts", "MPEG transport stream (.ts, .m2ts)"),
        ContainerFormat("flv", "flv", ".flv", "Flash video"),
        ContainerFormat("ogg", "ogg", ".ogv", "Ogg"),
        ContainerFormat("asf", "asf", ".wmv", "ASF (.wmv, .asf)"),
        ContainerFormat("mpeg", "mpeg", ".mpg", "MPEG program stream (.mpg, .vob)"),
    )
}


class UnsupportedContainer(ValueError):
    """Bytes of a recognised format that videojobs does not open (a playlist,
    an image, an audio-only format). `format_label` names it for the client."""

    def __init__(self, format_label: str, why: str) -> None:
        super().__init__(f"{format_label}: {why}")
        self.format_label = format_label
        self.why = why


class NotAContainer(ValueError):
    """Bytes that are no known media container at all."""


# Top-level ISO BMFF / QuickTime box types a file may start with.
_ISO_BMFF_FIRST_BOXES = frozenset(
    {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"pdin", b"styp"}
)
_ASF_HEADER_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_TS_SYNC = 0x47
# (packet size, offset of the sync byte inside a packet): plain, M2TS, with FEC.
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))
# Formats that name other files or URLs, or are not single-file video.
_REFUSED_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"#EXTM3U", "an HLS playlist", "playlists open other files and URLs"),
    (b"ffconcat", "an ffconcat list", "concat lists open other files"),
    (b"file '", "a concat list", "concat lists open other files"),
    (b"file ", "a concat list", "concat lists open other files"),
    (b"[playlist]", "a PLS playlist", "playlists open other files and URLs"),
    (b"#EXTINF", "a playlist", "playlists open other files and URLs"),
    (b"v=0", "an SDP session description", "it opens network streams"),
    (b"\x89PNG", "a PNG image", "images are not videos"),
    (b"\xff\xd8\xff", "a JPEG image", "images are not videos"),
    (b"GIF8", "a GIF image", "images are not videos"),
    (b"ID3", "an MP3 file", "audio-only formats are not accepted"),
    (b"fLaC", "a FLAC file", "audio-only formats are not accepted"),
)


def _is_xml_manifest(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:512].lower()
    return text.startswith(b"<?xml") or text.startswith(b"<mpd") or b"<mpd" in text


def _is_mpegts(head: bytes) -> bool:
    for packet_size, sync_offset in _TS_LAYOUTS:
        positions = range(sync_offset, len(head), packet_size)
        if len(head) < packet_size + sync_offset:
            continue
        checked = [p for p in positions][:10]
        if all(head[p] == _TS_SYNC for p in checked):
            return True
    return False


def _is_iso_bmff(head: bytes) -> bool:
    if len(head) < 8 or head[4:8] not in _ISO_BMFF_FIRST_BOXES:
        return False
    size = int.from_bytes(head[:4], "big")
    # 0: the box runs to the end of the file; 1: a 64-bit size follows.
    return size in (0, 1) or size >= 8


def sniff_container(head: bytes) -> ContainerFormat:
    """The allowed container `head` (the first bytes of a file, at least
    SNIFF_BYTES of them unless the file is shorter) starts with.

    Raises UnsupportedContainer for a recognised format that is not allowed
    and NotAContainer for anything else.
    """
    for signature, label, why in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            raise UnsupportedContainer(label, why)
    if _is_xml_manifest(head):
        raise UnsupportedContainer("an XML document (DASH manifest?)", "manifests open other files")
    if _is_iso_bmff(head):
        return ALLOWED_FORMATS["mp4"]
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return ALLOWED_FORMATS["matroska"]
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return ALLOWED_FORMATS["avi"]
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        raise UnsupportedContainer("a WAV file", "audio-only formats are not accepted")
    if head.startswith(b"FLV\x01"):
        return ALLOWED_FORMATS["flv"]
    if head.startswith(b"OggS"):
        return ALLOWED_FORMATS["ogg"]
    if head.startswith(_ASF_HEADER_GUID):
        return ALLOWED_FORMATS["asf"]
    if head.startswith(b"\x00\x00\x01\xba"):
        return ALLOWED_FORMATS["mpeg"]
    if _is_mpegts(head):
        return ALLOWED_FORMATS["mpegts"]
    raise NotAContainer("the bytes start like no supported video container")


def allowed_format(name: str) -> ContainerFormat:
    """The allowed format called `name`; KeyError for any other name."""
    return ALLOWED_FORMATS[name]
