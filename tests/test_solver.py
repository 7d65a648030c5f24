"""SGDSolver: learning-rate policies, Caffe's update rule, shared params, training, snapshot and restore."""
import logging
import math

import numpy
import pytest
from google.protobuf import text_format

from fastrcnn import backend, comm
from fastrcnn.blob import Blob
from fastrcnn.errors import Error
from fastrcnn.layers import register
from fastrcnn.layers.base import Layer
from fastrcnn.proto import caffe_pb2
from fastrcnn.solver import UPDATE_BLOCK, SGDSolver, learning_rate

# -- test layers -------------------------------------------------------------------------------------------
TARGETS = {"quad": [0.5, 0.5], "qa": [1.0, 3.0], "qb": [-2.0, 0.0]}
START = [1.0, -2.0]


@register("TestQuadratic")
class QuadraticLayer(Layer):
    """loss = ½‖w − c‖² with one param blob w (starting at START) and c = TARGETS[layer name]."""
    exact_bottoms = 0
    exact_tops = 1
    is_loss = True

    def setup(self, bottom, top):
        self.target = numpy.array(TARGETS[self.name], dtype=numpy.float32)
        self.blobs = [Blob((2,), name=f"{self.name}_w")]
        self.blobs[0].data[...] = START

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[...] = 0.5 * ((self.blobs[0].data - self.target) ** 2).sum()

    def backward(self, top, propagate_down, bottom):
        if self.param_propagate_down[0]:
            self.blobs[0].diff += top[0].diff * (self.blobs[0].data - self.target)


@register("TestWideQuadratic")
class WideQuadraticLayer(Layer):
    """loss = ½‖w − c‖² over a parameter of several update blocks (random start and target)."""
    exact_bottoms = 0
    exact_tops = 1
    is_loss = True
    size = 3 * UPDATE_BLOCK + 17

    def setup(self, bottom, top):
        rng = numpy.random.default_rng(5)
        self.target = rng.standard_normal(self.size).astype(numpy.float32)
        self.blobs = [Blob((self.size,), name="wide_w")]
        self.blobs[0].data[...] = rng.standard_normal(self.size)

    def reshape(self, bottom, top):
        top[0].reshape(())

    def forward(self, bottom, top):
        top[0].data[...] = 0.5 * ((self.blobs[0].data - self.target) ** 2).sum()

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff += top[0].diff * (self.blobs[0].data - self.target)


BATCH = 16


@register("TestBatch")
class BatchLayer(Layer):
    """12×12 images with a bright 3×3 square; label 0 if it lies in the left half, 1 in the right half.
    Drawn from the engine's generator, so that the solver's snapshots capture the data stream too."""
    exact_bottoms = 0
    exact_tops = 2

    def reshape(self, bottom, top):
        top[0].reshape(BATCH, 1, 12, 12)
        top[1].reshape(BATCH)

    def forward(self, bottom, top):
        rng = backend.rng()
        labels = rng.integers(0, 2, BATCH)
        images = rng.normal(0.0, 0.1, (BATCH, 1, 12, 12))
        rows, cols = rng.integers(0, 10, BATCH), rng.integers(0, 4, BATCH) + 6 * labels
        for n in range(BATCH):
            images[n, 0, rows[n]:rows[n] + 3, cols[n]:cols[n] + 3] += 1.0
        backend.upload(top[0].data, images)
        backend.upload(top[1].data, labels)


CONVNET = """
name: "squares"
layer { name: "batch" type: "TestBatch" top: "data" top: "label" }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc/1" type: "InnerProduct" bottom: "pool1" top: "fc1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param { dropout_ratio: 0.3 } }
layer { name: "score" type: "InnerProduct" bottom: "fc1" top: "score"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def solver_param(text, net=None):
    param = text_format.Parse(text, caffe_pb2.SolverParameter())
    if net is not None:
        param.net_param.CopyFrom(text_format.Parse(net, caffe_pb2.NetParameter()))
    return param


def quad_net(lr_mult=1, decay_mult=1):
    return f"""layer {{ name: "quad" type: "TestQuadratic" top: "loss"
                        param {{ lr_mult: {lr_mult} decay_mult: {decay_mult} }} }}"""


def params_of(net):
    return [backend.to_cpu(b.data).copy() for b in net.learnable_params]


# -- learning-rate policies --------------------------------------------------------------------------------
POLICIES = [
    ("fixed", "", lambda it: 0.01),
    ("step", "gamma: 0.1 stepsize: 3", lambda it: 0.01 * 0.1 ** (it // 3)),
    ("exp", "gamma: 0.9", lambda it: 0.01 * 0.9 ** it),
    ("inv", "gamma: 0.1 power: 0.75", lambda it: 0.01 * (1 + 0.1 * it) ** -0.75),
    ("poly", "power: 2 max_iter: 20", lambda it: 0.01 * (1 - it / 20) ** 2),
    ("sigmoid", "gamma: -0.5 stepsize: 5", lambda it: 0.01 / (1 + math.exp(0.5 * (it - 5)))),
]


@pytest.mark.parametrize("policy, fields, formula", POLICIES, ids=[p[0] for p in POLICIES])
def test_lr_policy(policy, fields, formula):
    param = solver_param(f'base_lr: 0.01 lr_policy: "{policy}" {fields}')
    for it in range(12):
        rate, step = learning_rate(param, it)
        assert step == 0
        assert rate == pytest.approx(formula(it), rel=1e-6)


def test_lr_multistep_advances_at_most_once_per_call():
    param = solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 5 stepvalue: 6')
    step, rates = 0, []
    for it in range(8):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    assert rates == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.125, 0.125]
    # Starting late, the steps are caught up one per call, as in Caffe.
    assert learning_rate(param, 10, 0) == (0.5, 1)
    assert learning_rate(param, 10, 1) == (0.25, 2)


def test_solver_lr_does_not_advance_multistep():
    solver = SGDSolver(solver_param('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 0', quad_net()))
    assert solver.lr() == 0.5 and solver.lr() == 0.5 and solver.current_step == 0
    solver.step(1)
    assert solver.current_step == 1


@pytest.mark.parametrize("text, message", [
    ('base_lr: 1 lr_policy: "cosine"', "unknown lr_policy 'cosine'"),
    ('base_lr: 1 lr_policy: "fixed" type: "Adam"', "solver type 'Adam'"),
    ('base_lr: 1 lr_policy: "fixed" solver_type: NESTEROV', "NESTEROV"),
    ('base_lr: 1 lr_policy: "fixed" snapshot_format: HDF5', "HDF5"),
    ('base_lr: 1 lr_policy: "fixed" regularization_type: "L3"', "regularization_type 'L3'"),
    ('base_lr: 1 lr_policy: "step"', "stepsize"),
    ('base_lr: 1 lr_policy: "fixed" iter_size: 0', "iter_size"),
])
def test_unsupported_settings(text, message):
    with pytest.raises(Error, match=message):
        SGDSolver(solver_param(text, quad_net()))


def test_solver_file_type_names_legacy_solver_type(tmp_path):
    (tmp_path / "solver.prototxt").write_text('base_lr: 1 lr_policy: "fixed" solver_type: ADAM')
    with pytest.raises(Error, match="solver type 'Adam'"):
        SGDSolver(str(tmp_path / "solver.prototxt"))


def test_train_net_must_be_given_once():
    with pytest.raises(Error, match="exactly one"):
        SGDSolver(solver_param('base_lr: 1 lr_policy: "fixed"'))
    param = solver_param('base_lr: 1 lr_policy: "fixed" train_net: "x.prototxt"', quad_net())
    with pytest.raises(Error, match="found 2"):
        SGDSolver(param)


# -- the update rule ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("reg, clip, iter_size", [("L2", 1.5, 2), ("L1", -1, 1), ("L2", 100.0, 3)])
def test_update_rule_matches_hand_computation(reg, clip, iter_size):
    lr, momentum, wd, lr_mult, decay_mult = 0.1, 0.9, 0.01, 2.0, 3.0
    solver = SGDSolver(solver_param(
        f'base_lr: {lr} lr_policy: "fixed" momentum: {momentum} weight_decay: {wd} '
        f'regularization_type: "{reg}" clip_gradients: {clip} iter_size: {iter_size}',
        quad_net(lr_mult, decay_mult)))
    w, c, history = numpy.array(START), numpy.array(TARGETS["quad"]), numpy.zeros(2)
    clipped = False
    for _ in range(4):
        grad = iter_size * (w - c)  # the diffs of iter_size passes add up
        norm = numpy.linalg.norm(grad)
        if 0 <= clip < norm:
            grad *= clip / norm
            clipped = True
        grad /= iter_size
        grad += wd * decay_mult * (w if reg == "L2" else numpy.sign(w))
        history = momentum * history + lr * lr_mult * grad
        w = w - history
        solver.step(1)
        numpy.testing.assert_allclose(solver.net.params["quad"][0].data, w, rtol=1e-5)
        numpy.testing.assert_allclose(solver.history[0], history, rtol=1e-5)
    assert clipped == (clip == 1.5)
    assert solver.iter == 4


def test_update_of_a_parameter_of_many_blocks_is_caffes_float32_steps():
    """The update runs a block at a time on several threads: each element still gets exactly Caffe's float32
    steps (decay, momentum, rate, subtraction), bitwise."""
    solver = SGDSolver(solver_param('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01',
                                    'layer { name: "wide" type: "TestWideQuadratic" top: "loss" '
                                    'param { lr_mult: 2 decay_mult: 3 } }'))
    layer = solver.net.layers[0]
    w, history = layer.blobs[0].data.copy(), numpy.zeros(layer.size, numpy.float32)
    f32 = numpy.float32
    for _ in range(3):
        diff = (w - layer.target) * f32(1)
        diff += f32(0.01) * f32(3) * w
        history *= f32(0.9)
        history += f32(0.1) * f32(2) * diff
        w -= history
        solver.step(1)
        assert numpy.array_equal(layer.blobs[0].data, w)
        assert numpy.array_equal(solver.history[0], history)


def test_shared_params_get_the_summed_gradient():
    net = """
        layer { name: "qa" type: "TestQuadratic" top: "la" param { name: "w" } }
        layer { name: "qb" type: "TestQuadratic" top: "lb" param { name: "w" } }
    """
    solver = SGDSolver(solver_param('base_lr: 0.25 lr_policy: "fixed"', net))
    assert solver.net.params["qa"][0] is solver.net.params["qb"][0]
    assert len(solver.net.learnable_params) == 1
    w = numpy.array(START)
    grad = (w - TARGETS["qa"]) + (w - TARGETS["qb"])
    solver.step(1)
    numpy.testing.assert_allclose(solver.net.params["qb"][0].data, w - 0.25 * grad, rtol=1e-6)


def test_smoothed_loss_callbacks_and_display(caplog):
    solver = SGDSolver(solver_param('base_lr: 0.1 lr_policy: "fixed" average_loss: 3 display: 2', quad_net()))
    losses, seen = [], []
    solver.callbacks.append(lambda s: losses.append(float(s.net.loss())))
    solver.callbacks.append(lambda s: seen.append(s.iter))
    with caplog.at_level(logging.INFO, logger="fastrcnn"):
        for n in range(5):
            solver.step(1)
            assert solver.smoothed_loss == pytest.approx(numpy.mean(losses[-3:]), rel=1e-12)
    assert seen == [1, 2, 3, 4, 5]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Iteration")]
    assert len(lines) == 3 and lines[1].startswith("Iteration 2, lr = 0.1, loss = ") and "loss = " in lines[1]


# -- a small convnet ---------------------------------------------------------------------------------------
def convnet_solver(extra="", seed=3):
    return SGDSolver(solver_param(
        f'base_lr: 0.05 lr_policy: "multistep" gamma: 0.5 stepvalue: 6 stepvalue: 15 momentum: 0.9 '
        f'weight_decay: 0.0005 average_loss: 10 random_seed: {seed} {extra}', CONVNET))


def test_convnet_learns_and_tests():
    solver = convnet_solver("test_iter: 4 test_interval: 1000 test_initialization: false")
    test_net = solver.test_nets[0]
    assert test_net.phase == "TEST"
    for name, blobs in solver.net.params.items():
        assert all(a is b for a, b in zip(test_net.params[name], blobs))
    for _ in range(12):
        solver.step(10)
        if solver.smoothed_loss < 0.05:
            break
    assert solver.smoothed_loss < 0.05, (solver.iter, solver.smoothed_loss)
    assert solver.test_all()[0]["loss"] < 0.1


def test_test_nets_need_test_iter_and_interval():
    net = CONVNET.replace("\n", " ")
    with pytest.raises(Error, match="one test_iter per test net"):
        SGDSolver(solver_param('base_lr: 1 lr_policy: "fixed" test_net_param { %s }' % net, quad_net()))
    with pytest.raises(Error, match="test_interval"):
        SGDSolver(solver_param('base_lr: 1 lr_policy: "fixed" test_iter: 1', CONVNET))


class CounterHook:
    def __init__(self):
        self.count = 0

    def snapshot_state(self):
        return {"count": self.count}

    def restore_state(self, state):
        self.count = state["count"]


def test_snapshot_restore_continues_bitwise(tmp_path):
    straight = convnet_solver()
    straight.step(20)

    first = convnet_solver()
    hook = CounterHook()
    first.snapshot_hooks.append(hook)
    first.callbacks.append(lambda s: setattr(hook, "count", hook.count + 1))
    first.snapshot_dir = str(tmp_path)
    first.param.snapshot_prefix = "run/tiny"
    first.step(8)
    state = first.snapshot()
    assert state == str(tmp_path / "run" / "tiny_iter_8.solverstate")
    assert (tmp_path / "run" / "tiny_iter_8.npz").exists()

    backend.set_random_seed(12345)  # the restore must bring the generator back
    resumed = convnet_solver(seed=99)
    resumed_hook = CounterHook()
    resumed.snapshot_hooks.append(resumed_hook)
    resumed.restore(state)
    assert resumed.iter == 8 and resumed_hook.count == 8 and resumed.current_step == 1
    assert resumed.smoothed_loss == first.smoothed_loss
    resumed.step(12)
    assert resumed.iter == straight.iter == 20
    assert resumed.current_step == straight.current_step == 2
    assert resumed.smoothed_loss == straight.smoothed_loss
    for a, b in zip(params_of(straight.net), params_of(resumed.net)):
        assert numpy.array_equal(a, b)
    for a, b in zip(straight.history, resumed.history):
        assert numpy.array_equal(a, b)


def test_restore_errors(tmp_path):
    solver = convnet_solver()
    solver.snapshot_dir = str(tmp_path)
    solver.param.snapshot_prefix = "s"
    state = solver.snapshot()
    with pytest.raises(Error, match="not a fastrcnn solver state"):
        solver.restore(str(tmp_path / "s_iter_0.npz"))
    solver.snapshot_hooks.append(CounterHook())
    with pytest.raises(Error, match="snapshot hook"):
        solver.restore(state)
    other = SGDSolver(solver_param('base_lr: 0.1 lr_policy: "fixed"', quad_net()))
    with pytest.raises(Error, match="momentum"):
        other.restore(state)


def test_solve_snapshots_and_resolves_paths(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "train.prototxt").write_text(quad_net())
    (folder / "solver.prototxt").write_text(
        'net: "train.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 7 snapshot: 5 '
        'snapshot_prefix: "snaps/quad"')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    solver = SGDSolver("../model/solver.prototxt")
    solver.solve()
    assert solver.iter == 7
    assert sorted(p.name for p in (work / "snaps").iterdir()) == [
        "quad_iter_5.npz", "quad_iter_5.solverstate", "quad_iter_7.npz", "quad_iter_7.solverstate"]
    again = SGDSolver("../model/solver.prototxt")
    again.param.max_iter = 7
    again.solve(resume_file="snaps/quad_iter_5.solverstate")
    assert numpy.array_equal(params_of(again.net)[0], params_of(solver.net)[0])


def test_default_snapshot_prefix_is_the_solver_file(tmp_path, monkeypatch):
    (tmp_path / "train.prototxt").write_text(quad_net())
    (tmp_path / "solver.prototxt").write_text('net: "train.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    monkeypatch.chdir(tmp_path)
    assert SGDSolver("solver.prototxt").snapshot() == "solver_iter_0.solverstate"
    assert (tmp_path / "solver_iter_0.npz").exists()


def test_random_seed_fixes_initial_weights():
    a, b, c = convnet_solver(seed=5), convnet_solver(seed=5), convnet_solver(seed=6)
    assert all(numpy.array_equal(x, y) for x, y in zip(params_of(a.net), params_of(b.net)))
    assert not numpy.array_equal(params_of(a.net)[0], params_of(c.net)[0])


class _RankOfTwo(comm.SingleProcess):
    """Rank ``rank`` of two whose collectives return this process's own values (every rank's, here)."""
    size = 2

    def __init__(self, rank):
        self.rank = rank


@pytest.mark.parametrize("rank, tested", [(0, [1, 2]), (1, [])])
def test_solve_tests_on_rank_0_alone(rank, tested):
    """Rank 0 alone runs the test nets, in ``step`` as at the end of ``solve``."""
    solver = SGDSolver(solver_param('base_lr: 0.05 lr_policy: "fixed" max_iter: 2 random_seed: 1 test_iter: 1 '
                                    'test_interval: 1 test_initialization: false snapshot_after_train: false', CONVNET),
                       _RankOfTwo(rank))
    forward = solver.test_nets[0].forward
    ran = []
    solver.test_nets[0].forward = lambda: ran.append(solver.iter) or forward()
    solver.solve()
    assert ran == tested
