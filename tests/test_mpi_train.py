"""Data-parallel training: ``mpiexec -n 2 frcnn-solve`` trains the toy model as one process with iter_size 2
does (the same minibatches, RoIs, dropout masks and BatchNorm statistics): bitwise with --ordered-sum, within
float32 rounding with the allreduce; buckets change nothing; a failing rank ends every rank."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
from mpi_helpers import break_quantization_tables, fault_layer

from fastrcnn import comm, protoio
from fastrcnn.rcnn.datasets import get_dataset
from fastrcnn.rcnn.datasets.toy import generate_toy_dataset
from fastrcnn.rcnn.proposals import load_or_compute_proposals
from fastrcnn.rcnn.roi_data_layer import minibatch_indices
from fastrcnn.rcnn.train import build_config
from fastrcnn.weights import read_npz

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "prototxt" / "toy"
ITERS = 3
#: A Dropout layer after fc6's ReLU, for the dropout masks' part (CaffeNet's fc6/fc7 have one each).
DROPOUT = ('layer { name: "relu_fc6" type: "ReLU" bottom: "fc6" top: "fc6" }',
           'layer { name: "relu_fc6" type: "ReLU" bottom: "fc6" top: "fc6" }\n'
           'layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }')


def _env(threads):
    """A plain environment; ``threads`` per process: with one, every layer sums a pass's gradient in one piece
    (one process and the ranks then add the same terms), with two the sums come in per-thread pieces."""
    env = {k: v for k, v in os.environ.items() if not comm.launched_by_mpi({k: v})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env["FASTRCNN_ALLOW_PYTHON_LAYERS"] = "1"  # mpi_helpers.Fault
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six toy training images (twelve roidb entries with the flipped copies), and the solvers of the toy net
    with and without a dropout layer, at iter_size 1 and 2."""
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(root / "small", seed=4, num_train=6, num_test=1)
    net = (TOY / "train.prototxt").read_text()
    assert DROPOUT[0] in net
    (root / "dropout.prototxt").write_text(net.replace(DROPOUT[0], DROPOUT[1]))
    solver = (TOY / "solver.prototxt").read_text()
    for name, train_net in (("plain", TOY / "train.prototxt"), ("dropout", root / "dropout.prototxt")):
        for iter_size in (1, 2):
            text = solver.replace('train_net: "train.prototxt"', f'train_net: "{train_net}"')
            (root / f"{name}_{iter_size}.prototxt").write_text(text + f"iter_size: {iter_size}\n")
    return root


def _solve(root, solver, output, ranks=None, extra=(), timeout=120, threads=2):
    command = [sys.executable, "-m", "fastrcnn.cli.solve", str(root / solver), "--imdb", f"voc:{root / 'small'}:train",
               "--data-root", str(root), "--output", str(output), "--iters", str(ITERS), "--quiet",
               "--set", "TRAIN.SCALES", "(128,)", "--set", "TRAIN.MAX_SIZE", "200",
               "--set", "TRAIN.IMS_PER_BATCH", "2", "--set", "TRAIN.BATCH_SIZE", "32", *extra]
    if ranks:
        command = [comm.mpiexec(), "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(threads))


def _trained(result, iters=ITERS):
    """The final state's params and momentum (the normalised bbox_pred, as training holds it)."""
    assert result.returncode == 0, result.stderr
    weights = result.stdout.splitlines()[-1]
    arrays, meta = read_npz(weights[:-len(".npz")] + ".solverstate", "state")
    assert meta["iter"] == iters
    return arrays, meta


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """One process, iter_size 2: the reference of the two-rank runs (plain and dropout nets)."""
    out = tmp_path_factory.mktemp("single")
    return {name: _trained(_solve(data, f"{name}_2.prototxt", out / name)) for name in ("plain", "dropout")}


def test_ordered_sum_is_bitwise_one_process_with_iter_size_2(data, single, tmp_path):
    result = _solve(data, "dropout_1.prototxt", tmp_path, ranks=2, extra=["--ordered-sum"])
    arrays, meta = _trained(result)
    reference, reference_meta = single["dropout"]
    assert sorted(arrays) == sorted(reference)
    for name in reference:  # params (BatchNorm's running statistics among them) and momentum
        numpy.testing.assert_array_equal(arrays[name], reference[name], err_msg=name)
    assert meta["losses"] == reference_meta["losses"]  # each minibatch's loss, added in the same order
    assert result.stdout.count("\n") == 1  # rank 0 alone prints the weights' path
    assert result.stderr.count("Optimization done") <= 1 and "Data-parallel on 2 ranks" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "loss.png", "toy_fast_rcnn_iter_3.npz", "toy_fast_rcnn_iter_3.solverstate", "train.log"]


def test_two_ranks_continue_a_state_of_one_process_exactly(data, single, tmp_path):
    """One process with iter_size 2 trains 2 iterations; two ranks restore its state and train the third:
    the result is the uninterrupted one process's (the state broadcast from rank 0, the sampler at the
    minibatch the state counts)."""
    first = _solve(data, "dropout_2.prototxt", tmp_path / "first", extra=["--iters", "2"])
    assert first.returncode == 0, first.stderr
    state = first.stdout.splitlines()[-1][:-len(".npz")] + ".solverstate"
    arrays, meta = _trained(_solve(data, "dropout_1.prototxt", tmp_path / "second", ranks=2,
                                   extra=["--ordered-sum", "--restore", state]))
    reference, reference_meta = single["dropout"]
    for name in reference:
        numpy.testing.assert_array_equal(arrays[name], reference[name], err_msg=name)
    assert meta["hooks"] == reference_meta["hooks"] == [{"minibatch": 2 * ITERS, "images": 12}]


def test_allreduce_equals_iter_size_2_within_float32_rounding_and_buckets_change_nothing(data, single, tmp_path):
    whole = _trained(_solve(data, "plain_1.prototxt", tmp_path / "whole", ranks=2, extra=["--bucket-mb", "1000"]))
    # buckets of 64 kB: the toy net's 5.8 MB of gradients go in 6 sums, started during backward
    bucketed = _trained(_solve(data, "plain_1.prototxt", tmp_path / "bucketed", ranks=2,
                               extra=["--bucket-mb", "0.0625"]))
    for name in whole[0]:  # two addends: every partition sums each element as a + b
        numpy.testing.assert_array_equal(bucketed[0][name], whole[0][name], err_msg=name)
    reference = single["plain"][0]
    for name, value in reference.items():
        scale = numpy.abs(value).max() + 1e-30
        # float32 sums in another order (measured: 1.2e-6 of the largest element after 3 iterations)
        numpy.testing.assert_allclose(whole[0][name], value, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_a_failing_rank_ends_every_rank_and_keeps_the_last_snapshot(data, tmp_path):
    """An image that rank 1 is the first to read, at iteration k ≥ 2 (one image per minibatch), breaks: both
    ranks end within seconds with rank 1's message, the snapshots up to k − 1 are whole and none is later than
    k (rank 0 may be writing k's, atomically, when rank 1 fails)."""
    root = tmp_path / "data"
    generate_toy_dataset(root / "small", seed=4, num_train=7, num_test=1)
    dataset = get_dataset(f"voc:{root / 'small'}:train", root)
    cfg = build_config(protoio.load_net(str(TOY / "train.prototxt")))
    load_or_compute_proposals(dataset, cfg, root, progress=False)  # the intact images' proposals
    count = 2 * dataset.num_images  # and their flipped copies, entry j showing image j mod num_images
    first = {}
    for g in range(4 * count):
        for j in minibatch_indices(cfg.RNG_SEED, g, count, 1):
            first.setdefault(int(j) % dataset.num_images, g)
    image, g = min(((i, g) for i, g in first.items() if g % 2 == 1 and g >= 5), key=lambda pair: pair[1])
    path = Path(dataset.image_path(image))
    break_quantization_tables(path)
    start = time.monotonic()
    result = _solve(data, "plain_1.prototxt", tmp_path / "out", ranks=2, timeout=60,
                    extra=["--imdb", f"voc:{root / 'small'}:train", "--data-root", str(root), "--iters", "8",
                           "--set", "TRAIN.SNAPSHOT_ITERS", "1", "--set", "TRAIN.IMS_PER_BATCH", "1"])
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert f"rank 1: error: {path}: cannot read the image" in result.stderr, result.stderr
    written = sorted(int(s.stem.rsplit("_", 1)[1]) for s in (tmp_path / "out").glob("*.solverstate"))
    assert written in (list(range(1, g // 2)), list(range(1, g // 2 + 1)))
    for k in written:
        assert read_npz(str(tmp_path / "out" / f"toy_fast_rcnn_iter_{k}.solverstate"), "state")[1]["iter"] == k
        read_npz(str(tmp_path / "out" / f"toy_fast_rcnn_iter_{k}.npz"), "weights")


SMALL_NET = '''
input: "x" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
input: "label" input_shape { dim: 2 }
layer { name: "conv1" type: "Convolution" bottom: "x" top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
'''


class _Recording(comm.SingleProcess):
    """Two ranks' interface in one process: records what each started sum holds and what conv2's weight
    gradient was at that moment; every rank's values are this one's."""
    size = 2

    def __init__(self, net):
        self.net, self.started = net, []

    def start_allreduce(self, array):
        self.started.append((array.copy(), self.net.params["conv2"][0].diff.copy()))
        return super().start_allreduce(array)

    def allgather(self, array):
        return numpy.stack([array, array])


def test_buckets_start_during_backward_in_reverse_layer_order_and_frozen_layers_send_nothing():
    from fastrcnn.data_parallel import DataParallel, trained_params
    from fastrcnn.net import Net
    net = Net(protoio.net_from_string(SMALL_NET), "TRAIN")
    fc, conv2 = net.params["fc"], net.params["conv2"]
    order = [fc[0], fc[1], conv2[0], conv2[1]]  # conv1's lr_mult 0: not sent
    assert [b for b, _ in trained_params(net)] == order
    recording = _Recording(net)
    parallel = DataParallel(net, recording, bucket_bytes=1)  # one param a bucket
    rng = numpy.random.default_rng(0)
    net.forward(x=rng.standard_normal((2, 3, 8, 8)), label=[1, 3])
    parallel.before_backward(True, True)
    net.backward()
    assert parallel.finish([0.5]) == [0.5, 0.5]
    assert len(recording.started) == 4
    for (sent, conv2_then), blob in zip(recording.started, order):
        numpy.testing.assert_array_equal(sent, blob.diff.ravel())
    for sent, conv2_then in recording.started[:2]:  # fc's sums start before conv2's backward has run
        assert not conv2_then.any()
    assert recording.started[2][1].any()
    whole = DataParallel(net, recording, bucket_bytes=1 << 30)
    assert len(whole.buckets) == 1 and whole.buckets[0].ready == net.layer_names.index("conv2")


@pytest.mark.slow
def test_four_ranks_equal_one_process_with_iter_size_4(data, tmp_path):
    solver = (TOY / "solver.prototxt").read_text().replace('train_net: "train.prototxt"',
                                                          f'train_net: "{data / "dropout.prototxt"}"')
    (data / "dropout_4.prototxt").write_text(solver + "iter_size: 4\n")
    reference = _trained(_solve(data, "dropout_4.prototxt", tmp_path / "one", threads=1))[0]
    ordered = _trained(_solve(data, "dropout_1.prototxt", tmp_path / "ordered", ranks=4, threads=1,
                              extra=["--ordered-sum"]))[0]
    summed = _trained(_solve(data, "dropout_1.prototxt", tmp_path / "summed", ranks=4, threads=1))[0]
    for name, value in reference.items():
        numpy.testing.assert_array_equal(ordered[name], value, err_msg=name)
        numpy.testing.assert_allclose(summed[name], value, rtol=0, atol=1e-5 * numpy.abs(value).max(), err_msg=name)


def _s_net(root, iter_size):
    """The paper's model S (prototxt/CaffeNet: conv1 frozen, dropout after fc6 and fc7) for the toy's 6 classes,
    MSRA-filled in place of ImageNet weights, and its solver at ``iter_size``."""
    net = (REPO / "prototxt" / "CaffeNet" / "train.prototxt").read_text()
    for old, new in (("num_classes: 21", "num_classes: 6"), ("num_output: 21", "num_output: 6"),
                     ("num_output: 84", "num_output: 24"),
                     ("convolution_param {", 'convolution_param { weight_filler { type: "msra" }'),
                     ("inner_product_param { num_output: 4096 }",
                      'inner_product_param { num_output: 4096 weight_filler { type: "msra" } }')):
        assert old in net
        net = net.replace(old, new)
    (root / "s_train.prototxt").write_text(net)
    solver = (REPO / "prototxt" / "CaffeNet" / "solver.prototxt").read_text()
    solver = solver.replace('train_net: "train.prototxt"', f'train_net: "{root / "s_train.prototxt"}"')
    (root / f"s_{iter_size}.prototxt").write_text(solver + f"iter_size: {iter_size}\n")
    return f"s_{iter_size}.prototxt"


@pytest.mark.slow
def test_the_s_net_with_dropout_on_two_ranks_is_bitwise_one_process_with_iter_size_2(data, tmp_path):
    """Model S on 64-pixel images (conv5 4 to 6 cells wide at stride 16), 8 RoIs an image, 2 iterations
    (about 25 s on two cores)."""
    small = ["--iters", "2", "--set", "TRAIN.SCALES", "(64,)", "--set", "TRAIN.MAX_SIZE", "96",
             "--set", "TRAIN.BATCH_SIZE", "16"]
    one = _trained(_solve(data, _s_net(data, 2), tmp_path / "one", timeout=300, extra=small), iters=2)
    two = _trained(_solve(data, _s_net(data, 1), tmp_path / "two", ranks=2, timeout=300,
                          extra=small + ["--ordered-sum"]), iters=2)
    assert sorted(one[0]) == sorted(two[0])
    for name, value in one[0].items():
        numpy.testing.assert_array_equal(two[0][name], value, err_msg=name)
    assert two[1]["losses"] == one[1]["losses"]
    still = sorted(int(k.split("/")[1]) for k, v in one[0].items() if k.startswith("history/") and not v.any())
    assert still == [0, 1]  # conv1 frozen, every other layer trained


def _faulty(data, tmp_path, action=None, at=0, base_lr="0.02"):
    """Train the toy net on two ranks, a snapshot every iteration, with a :class:`mpi_helpers.Fault` after fc6's
    ReLU doing ``action`` on rank 1 at iteration ``at`` (none without an action): returns (result, seconds, the
    iterations of the snapshots written, each checked whole and finite)."""
    net = (TOY / "train.prototxt").read_text()
    if action:
        net = net.replace(DROPOUT[0], DROPOUT[0] + "\n" + fault_layer("fc6", 1, at, action))
    (tmp_path / "faulty.prototxt").write_text(net)
    solver = (TOY / "solver.prototxt").read_text().replace("base_lr: 0.02", f"base_lr: {base_lr}")
    (tmp_path / "solver.prototxt").write_text(solver.replace('train_net: "train.prototxt"',
                                                             f'train_net: "{tmp_path / "faulty.prototxt"}"'))
    start = time.monotonic()
    result = _solve(tmp_path, "solver.prototxt", tmp_path / "out", ranks=2, timeout=60,
                    extra=["--imdb", f"voc:{data / 'small'}:train", "--data-root", str(data), "--iters", "6",
                           "--set", "TRAIN.SNAPSHOT_ITERS", "1"])
    seconds = time.monotonic() - start
    written = sorted(int(s.stem.rsplit("_", 1)[1]) for s in (tmp_path / "out").glob("*.solverstate"))
    for k in written:
        assert read_npz(str(tmp_path / "out" / f"toy_fast_rcnn_iter_{k}.solverstate"), "state")[1]["iter"] == k
        arrays, _ = read_npz(str(tmp_path / "out" / f"toy_fast_rcnn_iter_{k}.npz"), "weights")
        assert all(numpy.isfinite(a).all() for a in arrays.values()), k
    return result, seconds, written


def test_a_rank_killed_by_sigkill_ends_every_rank_and_keeps_the_snapshots(data, tmp_path):
    """Rank 1 is killed (SIGKILL) in its forward pass of iteration 3: the launcher ends rank 0 too, within
    seconds, with a non-zero status; snapshots 1 and 2 (which rank 0 may be writing, atomically, when rank 1
    dies) are whole, and there is no later one."""
    result, seconds, written = _faulty(data, tmp_path, "kill", 3)
    assert result.returncode != 0 and "Killed (signal 9)" in result.stdout, result.stderr  # MPICH's launcher
    assert seconds < 30
    assert written in ([1], [1, 2]), result.stderr


def test_a_nan_loss_on_one_rank_ends_every_rank_and_writes_no_broken_snapshot(data, tmp_path):
    """Rank 1's loss is NaN at iteration 3 (its fc6 made NaN), rank 0's finite; the summed gradient, so both
    ranks' weights, are broken: every rank ends within seconds with rank 1's message, which names the last good
    snapshot; snapshots 1 and 2 are whole and no snapshot 3 is written."""
    result, seconds, written = _faulty(data, tmp_path, "nan", 3)
    assert result.returncode != 0
    assert seconds < 30
    last = tmp_path / "out" / "toy_fast_rcnn_iter_2.solverstate"
    assert "rank 1: error: the loss became nan at iteration 3" in result.stderr, result.stderr
    assert f"The last good snapshot is {last}." in result.stderr
    assert written == [1, 2]


def test_two_ranks_of_iter_size_2_are_bitwise_one_process_with_iter_size_4(data, tmp_path):
    """Each rank runs two passes an iteration, minibatches 4k + 2r and 4k + 2r + 1 of one process's four; the
    ranks' buckets, started in the second pass's backward, sum both passes (within float32 rounding)."""
    solver = (TOY / "solver.prototxt").read_text().replace('train_net: "train.prototxt"',
                                                          f'train_net: "{data / "dropout.prototxt"}"')
    (tmp_path / "dropout_4.prototxt").write_text(solver + "iter_size: 4\n")
    (tmp_path / "dropout_2.prototxt").write_text(solver + "iter_size: 2\n")
    data_set = ["--imdb", f"voc:{data / 'small'}:train", "--data-root", str(data)]
    reference, reference_meta = _trained(_solve(tmp_path, "dropout_4.prototxt", tmp_path / "one", extra=data_set))
    arrays, meta = _trained(_solve(tmp_path, "dropout_2.prototxt", tmp_path / "two", ranks=2,
                                   extra=data_set + ["--ordered-sum"]))
    summed = _trained(_solve(tmp_path, "dropout_2.prototxt", tmp_path / "summed", ranks=2,
                             extra=data_set + ["--bucket-mb", "0.0625"]))[0]
    for name, value in reference.items():
        numpy.testing.assert_array_equal(arrays[name], value, err_msg=name)
        numpy.testing.assert_allclose(summed[name], value, rtol=0, atol=1e-5 * numpy.abs(value).max(), err_msg=name)
    assert meta["losses"] == reference_meta["losses"] and meta["hooks"] == reference_meta["hooks"]


def test_params_gone_non_finite_on_every_rank_end_the_run_before_their_snapshot(data, tmp_path):
    """base_lr 1e6: the summed update overflows BatchNorm's statistics on both ranks alike while the losses are
    still finite; every rank stops at once with its message, and no snapshot holds the broken params."""
    result, seconds, written = _faulty(data, tmp_path, base_lr="1e6")
    assert result.returncode != 0 and seconds < 30
    found = re.search(r"rank \d: error: the params of .* became non-finite at iteration (\d+)", result.stderr)
    assert found, result.stderr
    broken = int(found.group(1))
    assert written == list(range(1, broken))
