"""Container recognition: every allowed container, written by PyAV here, is
recognised from its first bytes and opens with its demuxer forced; playlists,
concat lists, images and noise are refused."""

from __future__ import annotations

import io
import random

import av
import cv2
import numpy as np
import pytest

from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.containers import (
    ALLOWED_FORMATS,
    SNIFF_BYTES,
    NotAContainer,
    UnsupportedContainer,
    sniff_container,
)
from videojobs.pipelines.media import identify_container, open_media
from videojobs.stack.sample_video import write_sample_video

WIDTH, HEIGHT, FPS, FRAMES = 128, 96, 25, 12

# (PyAV muxer, video encoder, the format it must be recognised as). Ogg holds
# VP8 here: this PyAV build has no Theora encoder, and Ogg's VP8 mapping is
# what FFmpeg writes and reads. MPEG program streams come in two muxers
# (MPEG-1 systems and the DVD's MPEG-2 flavour).
WRITTEN = [
    ("mp4", "libx264", "mp4"),
    ("mov", "libx264", "mp4"),
    ("matroska", "libx264", "matroska"),
    ("webm", "libvpx-vp9", "matroska"),
    ("webm", "libvpx", "matroska"),
    ("avi", "mpeg4", "avi"),
    ("mpegts", "libx264", "mpegts"),
    ("mpegts", "mpeg2video", "mpegts"),
    ("flv", "flv", "flv"),
    ("flv", "libx264", "flv"),
    ("mpeg", "mpeg1video", "mpeg"),
    ("vob", "mpeg2video", "mpeg"),
    ("asf", "wmv2", "asf"),
    ("ogg", "libvpx", "ogg"),
]


def _encoder_available(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except av.error.FFmpegError:
        return False
    except ValueError:
        return False
    return True


def _written(muxer: str, codec: str) -> bytes:
    if not _encoder_available(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    target = io.BytesIO()
    write_sample_video(
        target,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        frames=FRAMES,
        codec=codec,
        container_format=muxer,
    )
    return target.getvalue()


def test_every_allowed_format_is_covered():
    assert {expected for _, _, expected in WRITTEN} == set(ALLOWED_FORMATS)


@pytest.mark.parametrize(("muxer", "codec", "expected"), WRITTEN, ids=lambda v: str(v))
def test_written_container_is_recognised_and_opens_forced(muxer, codec, expected):
    data = _written(muxer, codec)
    assert sniff_container(data[:SNIFF_BYTES]).name == expected
    assert identify_container(io.BytesIO(data)) == expected
    with open_media(io.BytesIO(data), expected) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        frames = list(container.decode(stream))
    assert len(frames) == FRAMES
    assert {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}


def test_identify_leaves_the_position_alone():
    data = _written("mp4", "libx264")
    source = io.BytesIO(data)
    source.seek(7)
    assert identify_container(source) == "mp4"
    assert source.tell() == 7


@pytest.mark.parametrize(
    ("muxer", "codec", "forced"),
    [("mp4", "libx264", "avi"), ("matroska", "libx264", "mpegts"), ("avi", "mpeg4", "mp4")],
)
def test_forced_demuxer_does_not_fall_back_to_probing(muxer, codec, forced):
    data = _written(muxer, codec)
    with pytest.raises(PipelineFailure) as caught:
        with open_media(io.BytesIO(data), forced):
            pass
    assert caught.value.reason == "INPUT_NOT_MEDIA"
    assert not caught.value.retryable


def test_unknown_format_name_is_unsupported():
    data = _written("mp4", "libx264")
    for name in ("hls", "concat", "image2", "", "mov"):
        with pytest.raises(PipelineFailure) as caught:
            open_media(io.BytesIO(data), name)
        assert caught.value.reason == "UNSUPPORTED_CONTAINER", name
        assert not caught.value.retryable


def _playlist_before_ts() -> bytes:
    playlist = (
        b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
        b"#EXTINF:2.0,\nhttp://127.0.0.1:9/segment.ts\n#EXTINF:2.0,\n../../other/input/source.mp4\n"
        b"#EXT-X-ENDLIST\n"
    )
    return playlist + _written("mpegts", "libx264")


def _png() -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((32, 32, 3), 200, np.uint8))
    assert ok
    return encoded.tobytes()


def _jpeg() -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.full((32, 32, 3), 200, np.uint8))
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize(
    ("make", "label"),
    [
        (_playlist_before_ts, "HLS playlist"),
        (lambda: b"ffconcat version 1.0\nfile '../../other/input/source.mp4'\n", "ffconcat"),
        (lambda: b"file '/etc/passwd'\nfile 'b.mp4'\n", "concat list"),
        (_png, "PNG"),
        (_jpeg, "JPEG"),
        (lambda: b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">', "XML"),
    ],
    ids=["hls", "ffconcat", "concat", "png", "jpeg", "dash"],
)
def test_refused_formats(make, label):
    data = make()
    with pytest.raises(UnsupportedContainer) as caught:
        sniff_container(data[:SNIFF_BYTES])
    assert label in caught.value.format_label
    with pytest.raises(PipelineFailure) as failure:
        identify_container(io.BytesIO(data))
    assert failure.value.reason == "UNSUPPORTED_CONTAINER"
    assert not failure.value.retryable


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_random_bytes_are_not_a_container(seed):
    data = random.Random(seed).randbytes(SNIFF_BYTES)
    with pytest.raises(NotAContainer):
        sniff_container(data)
    with pytest.raises(PipelineFailure) as failure:
        identify_container(io.BytesIO(data))
    assert failure.value.reason == "INPUT_NOT_MEDIA"


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x01", b"RIFF\x00\x00", b"G"])
def test_empty_or_short_input_is_not_a_container(data):
    with pytest.raises(NotAContainer):
        sniff_container(data)


def test_ts_body_behind_text_is_not_a_transport_stream():
    body = _written("mpegts", "libx264")
    assert sniff_container(body[:SNIFF_BYTES]).name == "mpegts"
    with pytest.raises(NotAContainer):
        sniff_container((b"hello\n" + body)[:SNIFF_BYTES])
