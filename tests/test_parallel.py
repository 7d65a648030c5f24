"""fastrcnn.parallel: a layer's pieces run on every OpenBLAS thread at once, with OpenBLAS itself on one thread
meanwhile, and give what one thread gives."""
import multiprocessing
import os
import threading
import time

import numpy
import pytest

import fastrcnn
from fastrcnn import backend, parallel, protoio
from fastrcnn.layers.activation import ReLU
from layer_helpers import make_layer

BLAS = parallel.openblas_threads()
needs_blas = pytest.mark.skipif(BLAS is None, reason="NumPy's OpenBLAS is not among the loaded libraries")


@pytest.fixture
def blas_threads():
    """A setter of OpenBLAS's thread count; the count is restored after the test."""
    before = BLAS[1]()
    yield BLAS[0]
    BLAS[0](before)


def test_numpys_openblas_is_found_where_numpy_bundles_one():
    blas = numpy.__config__.CONFIG["Build Dependencies"]["blas"]
    if "openblas" in blas["name"] and numpy.__file__.startswith("/"):
        assert BLAS is not None


def test_numpys_own_openblas_is_preferred_to_other_packages(tmp_path, monkeypatch):
    root = tmp_path / "site-packages"
    monkeypatch.setattr(numpy, "__file__", str(root / "numpy" / "__init__.py"))
    ours = f"{root}/numpy.libs/libscipy_openblas64_-1234.so"
    opencv = f"{root}/opencv_contrib_python_headless.libs/libopenblasp-r0-5678.3.15.so"
    line = "7f00-7f10 r-xp 00000000 08:01 42 {}\n"
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 rw-p 00000000 00:00 0 \n" + "".join(line.format(p) for p in (opencv, ours, ours)))
    assert parallel._loaded_openblas(str(maps)) == [ours]
    maps.write_text(line.format(opencv) + line.format("/usr/lib/libopenblas.so.0"))
    assert parallel._loaded_openblas(str(maps)) == []  # two others: which one NumPy uses is unknown
    maps.write_text(line.format("/usr/lib/libopenblas.so.0"))
    assert parallel._loaded_openblas(str(maps)) == ["/usr/lib/libopenblas.so.0"]
    assert parallel._loaded_openblas(str(tmp_path / "missing")) == []


def test_split_and_planes(monkeypatch):
    assert parallel.split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert parallel.split(5, 2, grain=4) == [(0, 5)]
    assert parallel.split(0, 2) == [(0, 0)]
    monkeypatch.setattr(parallel, "threads", lambda xp=numpy: 4)
    # two images: two pieces each; the pieces are never smaller than GRAIN elements
    assert parallel.planes(numpy, (2, 8, 128, 128), 1) == [(0, 0, 4), (0, 4, 8), (1, 0, 4), (1, 4, 8)]
    assert parallel.planes(numpy, (1, 8, 256, 256), 1) == [(0, 0, 2), (0, 2, 4), (0, 4, 6), (0, 6, 8)]
    assert parallel.planes(numpy, (1, 8, 128, 128), 2) == [(0, 0, 64), (0, 64, 128)]
    assert parallel.planes(numpy, (1, 8, 64, 64), 1) == [(0, 0, 8)]


@needs_blas
def test_shares_run_at_once_each_on_one_blas_thread(blas_threads):
    blas_threads(2)
    together = threading.Barrier(2, timeout=30)  # passes only if both shares run at the same time

    def run(share):
        together.wait()
        return share, threading.get_ident(), parallel.threads(), BLAS[1]()
    results = parallel.in_parallel(numpy, run, range(5))
    assert [r[0] for r in results] == [[0, 2, 4], [1, 3]]
    assert results[0][1] == threading.get_ident() != results[1][1]
    assert all(r[2:] == (1, 1) for r in results)  # within a share: no nested parallelism, OpenBLAS on one thread
    assert BLAS[1]() == 2 and parallel.threads() == 2


@needs_blas
def test_one_blas_thread_runs_every_piece_here(blas_threads):
    blas_threads(1)
    assert parallel.in_parallel(numpy, lambda share: (share, threading.get_ident()), [1, 2, 3]) == [
        ([1, 2, 3], threading.get_ident())]


@needs_blas
def test_a_failing_share_is_raised_after_the_others_finished(blas_threads):
    blas_threads(2)
    finished = []

    def run(share):
        if share == [0]:
            raise ValueError("bad piece")
        time.sleep(0.2)
        finished.append(share)
    with pytest.raises(ValueError, match="bad piece"):
        parallel.in_parallel(numpy, run, [0, 1])
    assert finished == [[1]] and BLAS[1]() == 2


@needs_blas
def test_a_section_holds_openblas_on_one_thread_and_restores_it(blas_threads):
    blas_threads(2)
    with pytest.raises(RuntimeError):
        with parallel.section():
            assert BLAS[1]() == 1 and parallel.threads() == 2
            with parallel.section():
                assert BLAS[1]() == 1
            assert BLAS[1]() == 1
            raise RuntimeError
    assert BLAS[1]() == 2


@needs_blas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_threads_of_its_own(blas_threads):
    blas_threads(2)
    parallel.in_parallel(numpy, lambda share: None, [0, 1])  # the parent's pool exists
    child = multiprocessing.get_context("fork").Process(
        target=parallel.in_parallel, args=(numpy, lambda share: share, [0, 1]))
    child.start()
    child.join(60)
    assert child.exitcode == 0


@needs_blas
def test_net_passes_keep_openblas_on_one_thread_between_the_shares(blas_threads, monkeypatch):
    blas_threads(2)
    net = fastrcnn.Net(protoio.net_from_string(
        'force_backward: true input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 4 } '
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }'), "TRAIN")
    seen = []
    forward, backward = ReLU.forward, ReLU.backward
    monkeypatch.setattr(ReLU, "forward", lambda *a: seen.append(BLAS[1]()) or forward(*a))
    monkeypatch.setattr(ReLU, "backward", lambda *a: seen.append(BLAS[1]()) or backward(*a))
    net.forward(data=numpy.ones((1, 2, 3, 4)))
    net.backward(out=numpy.ones((1, 2, 3, 4), numpy.float32))
    assert seen == [1, 1] and BLAS[1]() == 2


LAYERS = {
    "conv im2col": ('type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 '
                    'group: 2 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" } }',
                    (2, 4, 45, 50)),
    "conv 1x1": ('type: "Convolution" convolution_param { num_output: 6 kernel_size: 1 '
                 'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" } }', (1, 4, 30, 41)),
    "conv winograd": ('type: "Convolution" convolution_param { num_output: 64 kernel_size: 3 pad: 1 '
                      'weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "gaussian" } }',
                      (1, 64, 23, 30)),
    "max pooling": ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', (2, 16, 67, 81)),
    "average pooling": ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
                        (1, 16, 100, 120)),
    "lrn across": ('type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 }', (1, 12, 120, 130)),
    "lrn within": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.01 beta: 0.75 norm_region: WITHIN_CHANNEL }',
                   (1, 12, 120, 130)),
    "relu": ('type: "ReLU" relu_param { negative_slope: 0.1 }', (2, 8, 100, 100)),
    "inner product": ('type: "InnerProduct" inner_product_param { num_output: 50 '
                      'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" } }',
                      (130, 3, 7, 7)),
    "batch norm": ('type: "BatchNorm"', (2, 32, 60, 70)),
    "scale": ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } '
              'bias_filler { type: "gaussian" } }', (2, 32, 60, 70)),
    # RoI pooling with few bins for the map (the sparse table) and with many (the whole map per bin extent)
    "roi pooling few": ('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.25 }',
                        (2, 64, 40, 50), 6),
    "roi pooling many": ('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.25 }',
                         (1, 256, 24, 25), 800),
}


def roi_bottom(rng, count, shape):
    """``count`` RoIs [batch, x1, y1, x2, y2] on the images of a (N, C, H, W) map at spatial scale 1/4."""
    corners = rng.uniform(0, 4 * numpy.array(shape[:1:-1] * 2), (count, 4))
    boxes = numpy.concatenate([corners[:, :2].clip(max=corners[:, 2:]), corners[:, 2:]], axis=1)
    return numpy.column_stack([rng.integers(0, shape[0], count), boxes]).astype(numpy.float32)


@needs_blas
@pytest.mark.parametrize("name", LAYERS)
def test_layers_in_parallel_match_one_thread(name, blas_threads, monkeypatch):
    text, shape, *rois = LAYERS[name]
    rng = numpy.random.default_rng(1)
    bottoms = [rng.standard_normal(shape).astype(numpy.float32)] + [roi_bottom(rng, n, shape) for n in rois]
    ran_on = set()
    share = parallel._as_share

    def recorded(function, pieces):
        ran_on.add(threading.current_thread().name)
        return share(function, pieces)
    monkeypatch.setattr(parallel, "_as_share", recorded)
    results = []
    for count in (1, 2):
        blas_threads(count)
        backend.set_random_seed(0)  # the same weights both times
        layer, bottom, top = make_layer(text, bottoms, dtype=numpy.float32)
        top[0].diff[...] = numpy.random.default_rng(2).standard_normal(top[0].shape)
        layer.backward(top, [True] + [False] * len(rois), bottom)
        results.append([top[0].data.copy(), bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
        assert (len(ran_on) > 1) == (count == 2), ran_on
    for one, two in zip(*results):
        numpy.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5 * float(numpy.abs(one).max()))
