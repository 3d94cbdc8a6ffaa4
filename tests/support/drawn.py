"""Videos with known content drawn into their frames: colour shots with hard
cuts, a moving QR code with a known payload, and printed text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from videojobs.stack.sample_video import write_frames

SHOT_COLOURS = [(40, 40, 200), (40, 180, 40), (200, 60, 30), (20, 20, 20)]  # BGR


@dataclass(frozen=True)
class DrawnVideo:
    """What was drawn, for the assertions."""

    path: Path
    fps: int
    frames: int
    width: int
    height: int
    cuts: tuple[int, ...]
    qr_payload: str
    qr_boxes: tuple[tuple[int, int, int, int], ...]  # (x, y, w, h) of the code's modules
    text: str
    text_frames: range


def qr_image(payload: str, module_pixels: int = 6) -> np.ndarray:
    """A QR code with a white quiet zone, as a grayscale image."""
    code = cv2.QRCodeEncoder.create().encode(payload)
    code = cv2.resize(
        code,
        (code.shape[1] * module_pixels, code.shape[0] * module_pixels),
        interpolation=cv2.INTER_NEAREST,
    )
    return cv2.copyMakeBorder(code, 24, 24, 24, 24, cv2.BORDER_CONSTANT, value=255)


def draw_video(
    path: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    frames: int = 100,
    cuts: tuple[int, ...] = (50,),
    qr_payload: str = "videojobs-qr-1",
    qr_step: int = 4,
    text: str = "HELLO 2026",
    text_frames: range = range(0, 50),
) -> DrawnVideo:
    """Draws and encodes the video; returns what it holds."""
    code = qr_image(qr_payload)
    side = code.shape[0]
    # Where the dark modules are inside the drawn image (the quiet zone is white).
    rows, columns = np.nonzero(code < 128)
    inner = (int(columns.min()), int(rows.min()), int(np.ptp(columns)) + 1, int(np.ptp(rows)) + 1)
    boxes = []
    images = []
    for index in range(frames):
        shot = sum(1 for cut in cuts if index >= cut)
        image = np.empty((height, width, 3), np.uint8)
        image[:] = SHOT_COLOURS[shot % len(SHOT_COLOURS)]
        x = min(20 + index * qr_step, width - side - 1)
        y = height - side - 10
        image[y : y + side, x : x + side] = cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)
        boxes.append((x + inner[0], y + inner[1], inner[2], inner[3]))
        if index in text_frames:
            cv2.rectangle(image, (20, 20), (20 + 420, 20 + 70), (255, 255, 255), -1)
            cv2.putText(image, text, (30, 75), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 4)
        images.append(image)
    write_frames(path, images, fps=fps)
    return DrawnVideo(
        path=path,
        fps=fps,
        frames=frames,
        width=width,
        height=height,
        cuts=cuts,
        qr_payload=qr_payload,
        qr_boxes=tuple(boxes),
        text=text,
        text_frames=text_frames,
    )
