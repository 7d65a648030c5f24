"""The S/M/L TEST nets (prototxt/, the original's nets layer for layer) against OpenCV's dnn module, an
independent Caffe implementation.

Each net gets He-initialised random weights, written as a .caffemodel by ``fastrcnn.weights.save_weights``
and read back by ``cv2.dnn.readNetFromCaffe`` with the same prototxt; both run the same image blob and
RoIs (some whose corners × 1/16 land on .5, where the original's C ``round`` goes away from zero) and are
compared blob by blob as max|ours − OpenCV| / max|OpenCV|.

OpenCV 4.x's Caffe importer ignores LRN's ``k`` (it always uses 1), so VGG_CNN_M_1024, whose LRNs use
``k: 2``, is compared on a copy with ``k: 1``; its k = 2 LRNs are compared with PyTorch instead.
"""
import numpy
import pytest
from google.protobuf import text_format

import fastrcnn
from fastrcnn import protoio
from fastrcnn.weights import save_weights
from layer_helpers import make_layer, relative_error
from model_helpers import CONV5, PROTOTXT, image_blob, msra_fill

TOLERANCE = 1e-4
HEIGHT, WIDTH = 224, 288
# [batch, x1, y1, x2, y2]; 8, 24, 40, ... × 1/16 = k + 0.5
ROIS = numpy.array([[0, 0, 0, WIDTH - 1, HEIGHT - 1],
                    [0, 8, 24, 200, 152],
                    [1, 24, 40, 136, 120],
                    [0, 40.5, 7.9, 120.3, 100.2],
                    [1, 264, 200, 287, 223],
                    [0, 100, 50, 100, 50],         # a single pixel
                    [1, 50, 60, 30, 40],           # x2 < x1, y2 < y1: forced to a 1×1 RoI
                    [0, 200, 150, 400, 300]],      # reaching past the image: clipped
                   dtype=numpy.float32)
IMAGES = {"CaffeNet": 2, "VGG_CNN_M_1024": 2, "VGG16": 1}  # images per blob; VGG16 is the costly one


@pytest.fixture(scope="module")
def cv2():
    cv2 = pytest.importorskip("cv2", reason="needs OpenCV (opencv-python) as the oracle")
    if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no dnn.readNetFromCaffe (removed in OpenCV 5)")
    return cv2


def last_writers(prototxt):
    """{blob: name of the last layer writing it}: OpenCV names outputs by layer, and in-place layers
    (ReLU, Dropout) write the blob again, so the last writer's output is the blob's final value."""
    writers = {}
    for lp in protoio.load_net(prototxt).layer:
        for top in lp.top:
            writers[top] = lp.name
    return writers


def compare(cv2, prototxt, model, tmp_path):
    """{blob: relative error of ours against OpenCV} for one of ``model``'s nets, and our blobs."""
    blobs = [CONV5[model], "pool5", "fc7", "cls_score", "cls_prob", "bbox_pred"]
    net = fastrcnn.Net(str(prototxt), "TEST")
    msra_fill(net, seed=7)
    weights = tmp_path / "random.caffemodel"
    save_weights(net, str(weights))
    image = image_blob(numpy.random.default_rng(8), (IMAGES[model], 3, HEIGHT, WIDTH))
    rois = ROIS[ROIS[:, 0] < IMAGES[model]]
    ours = net.forward(blobs=blobs, data=image, rois=rois)

    oracle = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    oracle.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    oracle.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    oracle.setInput(image, "data")
    oracle.setInput(rois, "rois")
    writers = last_writers(prototxt)
    theirs = oracle.forward([writers[b] for b in blobs])
    return {b: relative_error(ours[b], t) for b, t in zip(blobs, theirs)}, ours


def assert_close(errors):
    bad = {b: e for b, e in errors.items() if not e <= TOLERANCE}
    assert not bad, f"relative errors vs OpenCV above {TOLERANCE}: {bad} (all: {errors})"


@pytest.mark.parametrize("model", ["CaffeNet", "VGG16"])
def test_test_net_matches_opencv(cv2, tmp_path, model):
    prototxt = PROTOTXT / model / "test.prototxt"
    errors, ours = compare(cv2, prototxt, model, tmp_path)
    print(model, errors)
    assert_close(errors)
    assert numpy.abs(ours["pool5"]).max() > 1.0  # the features are alive, so the comparison means something


def test_vgg_cnn_m_1024_with_k1_matches_opencv(cv2, tmp_path):
    text = (PROTOTXT / "VGG_CNN_M_1024" / "test.prototxt").read_text()
    assert text.count("k: 2") == 2  # norm1 and norm2
    copy = tmp_path / "test_k1.prototxt"
    copy.write_text(text.replace("k: 2", "k: 1"))
    errors, _ = compare(cv2, copy, "VGG_CNN_M_1024", tmp_path)
    print("VGG_CNN_M_1024 (k: 1)", errors)
    assert_close(errors)


@pytest.mark.parametrize("layer", ["norm1", "norm2"])
def test_vgg_cnn_m_1024_lrn_k2_matches_torch(layer):
    torch = pytest.importorskip("torch", reason="needs PyTorch as the LRN oracle")
    net_param = protoio.load_net(PROTOTXT / "VGG_CNN_M_1024" / "test.prototxt")
    lp = next(lp for lp in net_param.layer if lp.name == layer)
    p = lp.lrn_param
    assert (p.local_size, p.k) == (5, 2.0)
    # ReLU outputs large enough that alpha/n·Σx² is comparable to k, so k visibly matters
    x = 20 * numpy.abs(numpy.random.default_rng(9).standard_normal((2, 96, 13, 17))).astype(numpy.float32)
    _, _, top = make_layer(text_format.MessageToString(lp), [x], dtype=numpy.float32)
    expected = torch.nn.functional.local_response_norm(
        torch.from_numpy(x.astype(numpy.float64)), size=p.local_size, alpha=p.alpha, beta=p.beta, k=p.k).numpy()
    assert relative_error(top[0].data, expected) <= 1e-6
    with_k1 = torch.nn.functional.local_response_norm(
        torch.from_numpy(x.astype(numpy.float64)), size=p.local_size, alpha=p.alpha, beta=p.beta, k=1.0).numpy()
    assert relative_error(top[0].data, with_k1) > 0.1
