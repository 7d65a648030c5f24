"""Drawing detections onto images (the original demo's vis_detections), as PNG files."""
from pathlib import Path

import cv2
import numpy as np

from ..errors import Error
from ..fileio import atomic_write


def _colour(j):
    """A distinct, stable BGR colour per class index."""
    hue = (j * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def draw_detections(image, dets, classes, path, thresh):
    """Draw every detection of ``dets[j]`` ((n, 5) per class j ≥ 1) scoring ≥ ``thresh`` with its class name
    and score, and write the PNG atomically. Returns the list of (class, score, box) drawn."""
    canvas = np.ascontiguousarray(image.copy())
    drawn = []
    scale = max(0.4, min(canvas.shape[:2]) / 600.0)
    for j in range(1, len(dets)):
        for x1, y1, x2, y2, score in np.asarray(dets[j]).reshape(-1, 5):
            if score < thresh:
                continue
            box = tuple(int(round(v)) for v in (x1, y1, x2, y2))
            colour = _colour(j)
            cv2.rectangle(canvas, box[:2], box[2:], colour, max(1, int(2 * scale)))
            label = f"{classes[j]} {score:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, 1)
            top = max(box[1] - th - base - 2, 0)
            cv2.rectangle(canvas, (box[0], top), (box[0] + tw + 4, top + th + base + 2), colour, -1)
            cv2.putText(canvas, label, (box[0] + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
                        (0, 0, 0), 1, cv2.LINE_AA)
            drawn.append((classes[j], float(score), box))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise Error(f"{path}: cannot encode the image")
    atomic_write(path, lambda f: f.write(png.tobytes()))
    return drawn
