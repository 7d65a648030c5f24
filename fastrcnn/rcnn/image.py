"""Image preprocessing shared by training and detection (the original's utils/blob.py).

BGR uint8 from cv2 → float32, minus the float64 PIXEL_MEANS in place (float32(float32(im) − means), as the
original's ``im -= pixel_means``) → resized so that the shorter side is the target scale and the
longer at most MAX_SIZE (the scale factor itself, not the realised size ratio, scales the RoIs) → zero-padded
into an N×3×H×W blob, images top-left aligned.
"""
import cv2
import numpy as np

from ..errors import Error


def read_image(path, flipped=False):
    """BGR uint8 image from a file (mirrored if ``flipped``); an unreadable file names itself."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise Error(f"{path}: cannot read the image (missing, truncated or not an image)")
    return image[:, ::-1] if flipped else image


def image_scale(height, width, target_size, max_size):
    """The original's scale: shorter side to ``target_size`` unless the longer side would exceed ``max_size``."""
    short, long = min(height, width), max(height, width)
    scale = float(target_size) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    return scale


def prep_image(image, pixel_means, target_size, max_size):
    """(mean-subtracted float32 image resized by the original's rule, scale factor).

    The means stay float64: the difference is computed in float64 and rounded once to float32, as the
    original's in-place subtraction; the resize comes after it, as there."""
    im = image.astype(np.float32, copy=True)
    im -= np.asarray(pixel_means, dtype=np.float64).reshape(1, 1, 3)
    scale = image_scale(im.shape[0], im.shape[1], target_size, max_size)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return im, scale


def scaled_rois(boxes, scales, indices):
    """float32 RoIs [index, x1, y1, x2, y2]: the boxes times their float64 scale factors, rounded once to
    float32 when the blob is filled, as the original's _project_im_rois in training and at test time.

    ``scales`` and ``indices`` (batch image or pyramid level) are scalars or one value per box."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scales = np.broadcast_to(np.asarray(scales, dtype=np.float64).reshape(-1, 1), (len(boxes), 1))
    indices = np.broadcast_to(np.asarray(indices, dtype=np.float64).reshape(-1, 1), (len(boxes), 1))
    return np.hstack([indices, boxes * scales]).astype(np.float32)


def images_to_blob(images):
    """HxWx3 float32 images → one N×3×Hmax×Wmax blob, zero-padded at the bottom and right."""
    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    blob = np.zeros((len(images), 3, height, width), dtype=np.float32)
    for i, im in enumerate(images):
        blob[i, :, :im.shape[0], :im.shape[1]] = im.transpose(2, 0, 1)
    return blob


def prefetch_images(paths, workers=2, depth=4):
    """Yield ``read_image(path)`` for each path, decoding up to ``depth`` images ahead in ``workers`` threads
    (OpenCV releases the GIL while it decodes, so loading overlaps the network's computation)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    paths = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imread") as pool:
        pending = deque(pool.submit(read_image, p) for _, p in zip(range(depth), paths))
        while pending:
            image = pending.popleft().result()
            for p in paths:
                pending.append(pool.submit(read_image, p))
                break
            yield image
