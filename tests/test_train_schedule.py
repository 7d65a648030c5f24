"""How long training runs: poly past max_iter is refused, --max-iter sets the lr curve and travels with the
snapshots, and the log counts epochs (passes over the roidb, flipped copies included)."""
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format

from fastrcnn.errors import Error
from fastrcnn.proto import caffe_pb2
from fastrcnn.rcnn.datasets.toy import generate_toy_dataset
from fastrcnn.rcnn.train import train
from fastrcnn.solver import SGDSolver
from fastrcnn.weights import read_npz, read_weights

REPO = Path(__file__).resolve().parents[1]
SMALL = ["TRAIN.SCALES", "(96,)", "TRAIN.MAX_SIZE", "160", "TRAIN.IMS_PER_BATCH", "2", "TRAIN.BATCH_SIZE", "32"]
BASE_LR = 0.02


@pytest.fixture(autouse=True)
def info_log(caplog):
    """train.log gets what the fastrcnn logger passes (frcnn-solve sets INFO)."""
    caplog.set_level(logging.INFO, logger="fastrcnn")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule")
    generate_toy_dataset(root / "four", seed=4, num_train=4, num_test=1)
    return root


def write_solver(folder, policy="poly", max_iter=4):
    """The toy solver with its train net beside it, displaying every iteration."""
    (folder / "train.prototxt").write_text((REPO / "prototxt" / "toy" / "train.prototxt").read_text())
    extra = {"poly": "power: 1", "step": "gamma: 0.5 stepsize: 2", "fixed": ""}[policy]
    path = folder / "solver.prototxt"
    path.write_text(f'train_net: "train.prototxt" base_lr: {BASE_LR} lr_policy: "{policy}" {extra} '
                    f'max_iter: {max_iter} display: 1 momentum: 0.9 snapshot_prefix: "s" random_seed: 1')
    return path


def run(data, solver, out, flipped=True, **kw):
    pairs = SMALL + ["TRAIN.USE_FLIPPED", str(flipped), "TRAIN.SNAPSHOT_ITERS", "0"]
    return train(str(solver), imdb=f"voc:{data / 'four'}:train", output_dir=out, data_root=data,
                 progress=False, set_pairs=pairs, **kw)


def logged(out, pattern):
    return re.findall(pattern, (out / "train.log").read_text())


def test_cli_refuses_poly_past_max_iter_with_both_numbers_and_fixes(data, tmp_path):
    solver = write_solver(tmp_path, max_iter=4)
    result = subprocess.run([sys.executable, "-m", "fastrcnn.cli.solve", str(solver), "--iters", "9",
                             "--imdb", f"voc:{data / 'four'}:train", "--data-root", str(data),
                             "--output", str(tmp_path / "out"), "--quiet"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    message = result.stderr
    assert message.startswith("error: ") and "Traceback" not in message
    assert "iteration 9 but max_iter is 4" in message and "learning rate 0" in message
    assert "max_iter: 9" in message and "--max-iter 9" in message
    assert not list((tmp_path / "out").glob("*.npz"))


def test_api_refuses_poly_past_max_iter_also_after_a_restore(data, tmp_path):
    solver = write_solver(tmp_path, max_iter=2)
    with pytest.raises(Error, match="iteration 3 but max_iter is 2"):
        run(data, solver, tmp_path / "a", iters=3)
    with pytest.raises(Error, match="iteration 5 but max_iter is 4"):
        run(data, solver, tmp_path / "a", iters=5, max_iter=4)
    with pytest.raises(Error, match="--max-iter must be at least 1, got 0"):
        run(data, solver, tmp_path / "a", max_iter=0)
    run(data, solver, tmp_path / "a", iters=1)
    with pytest.raises(Error, match="iteration 3 but max_iter is 2"):
        run(data, solver, tmp_path / "a", iters=3, restore=tmp_path / "a" / "s_iter_1.solverstate")


@pytest.mark.parametrize("policy", ["fixed", "step"])
def test_policies_without_max_iter_train_past_it(policy, data, tmp_path):
    solver = write_solver(tmp_path, policy=policy, max_iter=1)
    weights = run(data, solver, tmp_path / "out", iters=3)
    assert read_weights(weights)[1]["iter"] == 3
    rates = [float(r) for r in logged(tmp_path / "out", r"Iteration \d+ \(epoch [\d.]+\), lr = ([\d.e-]+)")]
    expected = [BASE_LR] * 3 if policy == "fixed" else [BASE_LR, BASE_LR, BASE_LR * 0.5]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_max_iter_sets_the_lr_curve_and_is_restored(data, tmp_path):
    solver = write_solver(tmp_path, max_iter=2)
    out = tmp_path / "out"
    first = run(data, solver, out, iters=2, max_iter=5)
    assert read_weights(first)[1]["solver_overrides"] == {"max_iter": 5}
    state = out / "s_iter_2.solverstate"
    assert read_npz(str(state), "state")[1]["solver_overrides"] == {"max_iter": 5}
    run(data, solver, out, iters=4, restore=state)  # no --max-iter: the state's 5, so 4 is allowed
    rates = [float(r) for r in logged(out, r"Iteration \d+ \(epoch [\d.]+\), lr = ([\d.e-]+)")]
    assert rates == pytest.approx([BASE_LR * (1 - i / 5) for i in range(4)], rel=1e-6)
    final = read_weights(out / "s_iter_4.npz")[1]
    assert final["iter"] == 4 and final["solver_overrides"] == {"max_iter": 5}


def test_override_travels_in_the_solver_state(tmp_path):
    net = text_format.Parse(
        'layer { name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 dim: 1 } data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } } '
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p" inner_product_param { num_output: 1 '
        'weight_filler { type: "gaussian" } } } '
        'layer { name: "loss" type: "SmoothL1Loss" bottom: "p" bottom: "y" top: "loss" }', caffe_pb2.NetParameter())

    def solver():
        param = text_format.Parse('base_lr: 0.1 lr_policy: "poly" power: 1 max_iter: 4 snapshot_prefix: "q"',
                                  caffe_pb2.SolverParameter())
        param.net_param.CopyFrom(net)
        s = SGDSolver(param)
        s.snapshot_dir = str(tmp_path)
        return s

    first = solver()
    first.override(max_iter=10)
    first.step(2)
    assert first.lr() == pytest.approx(0.1 * (1 - 2 / 10))
    restored = solver()
    assert restored.lr() == pytest.approx(0.1) and restored.param.max_iter == 4
    restored.restore(first.snapshot())
    assert restored.param.max_iter == 10 and restored.overrides == {"max_iter": 10}
    assert restored.lr() == pytest.approx(0.1 * (1 - 2 / 10))
    with pytest.raises(Error, match="'base_lr' cannot be overridden"):
        restored.override(base_lr=1.0)
    with pytest.raises(Error, match="positive max_iter"):
        restored.override(max_iter=0)
    assert restored.param.max_iter == 10


@pytest.mark.parametrize("flipped, entries", [(True, 8), (False, 4)])
def test_epochs_count_passes_over_the_roidb_with_flipped_copies(flipped, entries, data, tmp_path):
    solver = write_solver(tmp_path, max_iter=4)
    out = tmp_path / "out"
    run(data, solver, out, flipped=flipped)
    per_epoch = entries / 2  # 2 images an iteration
    (epoch_line,) = logged(out, r"Epoch: .*")
    assert epoch_line.startswith(f"Epoch: {entries} images (4{' and their flipped copies' if flipped else ''}), "
                                 f"{entries * 16} RoIs (16 per image), {per_epoch:g} iterations of 2 images")
    (schedule,) = logged(out, r"Schedule: .*")
    assert schedule == f"Schedule: 4 iterations = {4 / per_epoch:g} epochs (8 images, 128 RoIs)"
    epochs = [(int(i), float(e)) for i, e in logged(out, r"Iteration (\d+) \(epoch ([\d.]+)\)")]
    assert epochs == [(i, round(i / per_epoch, 2)) for i in range(4)]
