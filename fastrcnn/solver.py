"""SGD training, as Caffe's Solver and SGDSolver (src/caffe/solver.cpp, src/caffe/solvers/sgd_solver.cpp).

``SGDSolver(solver_file)`` builds the train net and the test nets (which share the train net's param blobs by
layer name), and ``step(n)`` runs Caffe's Step loop: clear the param diffs, test at ``test_interval``, sum
``iter_size`` forward/backward passes (each with the engine's random stream of its minibatch: dropout masks
depend on the minibatch's index only), smooth the loss over ``average_loss`` iterations, display, then
ApplyUpdate (learning rate, gradient clipping, normalisation, weight decay, momentum, ``data -= diff``) and
snapshot every ``snapshot`` iterations.

Snapshots are ``<prefix>_iter_<N>.npz`` (the weights) and ``<prefix>_iter_<N>.solverstate``: an .npz with
the momentum history and a JSON entry with the iteration, the multistep position, the smoothed-loss
window, the engine's random generator state, the seed of the minibatches' random streams, the states of
``snapshot_hooks`` and the solver fields this run overrode (``solver_overrides``, also in the weights'
metadata), so that a restored run continues exactly as the uninterrupted one. Unlike Caffe, which restarts
the loss average at every ``Step()`` call, the average runs across calls, so that loops of ``step(1)``
display a real average.

With a ``communicator`` of N ranks (``fastrcnn.comm``) the solver trains data-parallel as one process with
iter_size N·iter_size: rank r runs the passes r·iter_size … of each iteration, ``fastrcnn.data_parallel``
sums the gradients and orders the BatchNorm statistics, rank 0's weights and state are broadcast at the start
(``share_state``), and rank 0 alone tests and writes snapshots.
"""
import logging
import math
import os
from pathlib import Path

import numpy

from . import backend, comm, protoio, weights
from .errors import Error
from .net import Net, phase_name
from .parallel import elementwise
from .proto import caffe_pb2

log = logging.getLogger("fastrcnn")

STATE_FORMAT = "fastrcnn-solverstate"
STATE_VERSION = 1
#: Elements of a parameter that go through every step of the update together, while they are in cache (S's
#: 58 M parameters on two cores: 75 ms an iteration step after step, 29 ms a block at a time; smaller blocks
#: pay NumPy's per-call cost, larger ones leave the cache).
UPDATE_BLOCK = 1 << 17


def learning_rate(param, it, current_step=0):
    """(rate, current_step) of ``param.lr_policy`` at iteration ``it`` (SGDSolver::GetLearningRate).

    ``multistep`` advances ``current_step`` at most once per call, as Caffe does; the caller keeps it.
    """
    policy, base = param.lr_policy, param.base_lr
    if policy == "fixed":
        rate = base
    elif policy == "step":
        rate = base * param.gamma ** (it // param.stepsize)
    elif policy == "exp":
        rate = base * param.gamma ** it
    elif policy == "inv":
        rate = base * (1.0 + param.gamma * it) ** (-param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
        rate = base * param.gamma ** current_step
    elif policy == "poly":
        rate = base * max(0.0, 1.0 - it / param.max_iter) ** param.power  # 0 past max_iter, not NaN
    elif policy == "sigmoid":
        rate = base * 0.5 * (1.0 + math.tanh(0.5 * param.gamma * (it - param.stepsize)))  # 1/(1+e^-x)
    else:
        raise Error(f"solver: unknown lr_policy '{policy}'; "
                    "use fixed, step, exp, inv, multistep, poly or sigmoid")
    return float(numpy.float32(rate)), current_step


#: The lr policies whose curve ends at ``max_iter`` (poly is 0 from there on).
MAX_ITER_POLICIES = ("poly",)
#: The solver fields a run may override (``SGDSolver.override``).
OVERRIDABLE = ("max_iter",)


def check_schedule(param, stop, source):
    """Refuse to train to iteration ``stop`` past ``max_iter`` under a policy whose learning rate ends there:
    the iterations past it would run at lr 0, where momentum and weight decay move nothing either."""
    if param.lr_policy in MAX_ITER_POLICIES and stop > param.max_iter:
        raise Error(f"{source}: training to iteration {stop} but max_iter is {param.max_iter}, and lr_policy "
                    f"'{param.lr_policy}' reaches learning rate 0 at max_iter: iterations {param.max_iter} to {stop} "
                    f"would change nothing. Set max_iter: {stop} in {source}, or pass --max-iter {stop} "
                    f"(or train to {param.max_iter} only)")


def _check_param(param, source):
    """Reject what this solver does not implement, naming the field and value."""
    if param.type != "SGD":
        raise Error(f"{source}: solver type '{param.type}' is not supported; only SGD is implemented")
    if param.HasField("solver_type") and param.solver_type != caffe_pb2.SolverParameter.SGD:
        name = caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)
        raise Error(f"{source}: solver_type {name} is not supported; only SGD is implemented")
    if param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
        raise Error(f"{source}: snapshot_format HDF5 is not supported; remove it (snapshots are .npz files)")
    if param.regularization_type not in ("L1", "L2"):
        raise Error(f"{source}: unknown regularization_type '{param.regularization_type}'; use L2 or L1")
    if param.lr_policy == "step" and param.stepsize <= 0:
        raise Error(f"{source}: lr_policy 'step' needs a positive stepsize, got {param.stepsize}")
    if param.lr_policy == "poly" and param.max_iter <= 0:
        raise Error(f"{source}: lr_policy 'poly' needs a positive max_iter, got {param.max_iter}")
    for field in ("iter_size", "average_loss"):
        if getattr(param, field) < 1:
            raise Error(f"{source}: {field} must be at least 1, got {getattr(param, field)}")
    learning_rate(param, 0)  # an unknown lr_policy fails here, before any net is built


def resolve_path(path, folder, source, field):
    """A file named in a solver: relative to the current directory first, then to the solver's folder."""
    if os.path.exists(path) or os.path.isabs(path) or folder is None:
        return path
    beside = Path(folder) / path
    if beside.exists():
        return str(beside)
    raise Error(f"{source}: {field} '{path}' not found (looked in the current directory and in {folder})")


def train_net_field(param, source):
    """(field, value) of the one train net a SolverParameter names (a file name or an inline NetParameter)."""
    fields = ("train_net_param", "train_net", "net_param", "net")
    given = [(f, getattr(param, f)) for f in fields if param.HasField(f)]
    if len(given) != 1:
        raise Error(f"{source}: give the train net in exactly one of net, net_param, train_net, "
                    f"train_net_param (found {len(given)}: {', '.join(f for f, _ in given) or 'none'})")
    return given[0]


def train_net_source(solver_file):
    """(solver parameter, path of the train net or its inline NetParameter) of a solver file."""
    param = protoio.load_solver(solver_file)
    source = str(solver_file) if not isinstance(solver_file, caffe_pb2.SolverParameter) else "<solver>"
    field, value = train_net_field(param, source)
    if isinstance(value, str):
        folder = Path(solver_file).parent if source != "<solver>" else None
        value = resolve_path(value, folder, source, field)
    return param, value


class SGDSolver:
    """Stochastic gradient descent with momentum, as pycaffe's ``caffe.SGDSolver``.

    ``solver_file`` is a solver prototxt path or a SolverParameter. ``callbacks`` are called with the
    solver after every iteration, before its ``snapshot`` (one that raises stops the run before the snapshot of
    the weights it objects to); ``snapshot_hooks`` are objects with ``snapshot_state() -> dict``
    (JSON-able) and ``restore_state(dict)`` whose states travel in the .solverstate file.
    ``snapshot_dir``, when set, is the folder the snapshot prefix is taken relative to. ``communicator``,
    ``bucket_bytes`` and ``ordered_sum`` set up data-parallel training (``fastrcnn.data_parallel``).
    """

    def __init__(self, solver_file, communicator=None, bucket_bytes=None, ordered_sum=False):
        self.comm = communicator or comm.SingleProcess()
        self.param = protoio.load_solver(solver_file)
        from_file = not isinstance(solver_file, caffe_pb2.SolverParameter)
        self.source = str(solver_file) if from_file else "<solver>"
        self._folder = Path(solver_file).parent if from_file else None
        _check_param(self.param, self.source)
        if self.param.random_seed >= 0:
            backend.set_random_seed(self.param.random_seed)
        self.net = self._train_net()
        self.test_nets = self._test_nets()
        #: The seed of the minibatches' random streams (``backend.set_random_stream``).
        self.seed = self.param.random_seed if self.param.random_seed >= 0 else int(backend.rng().integers(1 << 62))
        self.parallel = None
        if self.comm.size > 1:
            from .data_parallel import BUCKET_BYTES, DataParallel
            self.parallel = DataParallel(self.net, self.comm, bucket_bytes or BUCKET_BYTES, ordered_sum)
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = 0.0
        self._losses = []
        self.pass_losses = []  # the last iteration's loss of each pass, every rank's, in minibatch order
        self.callbacks = []
        self.snapshot_hooks = []
        self.snapshot_dir = None
        #: The .solverstate path of this run's latest snapshot (None before the first).
        self.last_snapshot = None
        #: Solver fields set for this run, {field: value}; saved with snapshots, put back by ``restore``.
        self.overrides = {}
        #: Iterations per pass over the training data, when the caller knows it: display shows the epoch.
        self.iters_per_epoch = None
        xp = backend.array_module()
        self.history = [xp.zeros(b.shape, dtype=b.dtype) for b in self.net.learnable_params]
        #: Writes the weights file of a snapshot, ``writer(path, meta)``; the training pipeline replaces it
        #: to save test-ready weights. The solver state holds the params themselves, so restoring is exact.
        self.weights_writer = lambda path, meta: self.net.save(path, meta=meta)
        for path in self.param.weights:
            self.net.copy_from(resolve_path(path, self._folder, self.source, "weights"))

    # -- nets -------------------------------------------------------------------------------------------
    def _net_source(self, value, field):
        """(Net argument, NetParameter) for a net given by file name or inline."""
        if isinstance(value, str):
            path = resolve_path(value, self._folder, self.source, field)
            return path, protoio.load_net(path)
        return value, value

    @staticmethod
    def _state(phase, net_param, extra):
        """A solver net's NetState: the phase, then the net's own state, then the solver's (Solver::Init*)."""
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST)
        state.MergeFrom(net_param.state)
        if extra is not None:
            state.MergeFrom(extra)
        return state

    def _build(self, value, field, phase, extra):
        source, net_param = self._net_source(value, field)
        state = self._state(phase, net_param, extra)
        return Net(source, phase=phase_name(state.phase), stages=list(state.stage), level=state.level)

    def _train_net(self):
        field, value = train_net_field(self.param, self.source)
        return self._build(value, field, "TRAIN", self.param.train_state)

    def _test_nets(self):
        """One TEST-phase net per test_iter entry, sharing the train net's params (Solver::InitTestNets)."""
        p = self.param
        sources = [(v, "test_net_param") for v in p.test_net_param] + [(v, "test_net") for v in p.test_net]
        generic = [(getattr(p, f), f) for f in ("net_param", "net") if p.HasField(f)]
        if generic:
            if len(p.test_iter) < len(sources):
                raise Error(f"{self.source}: give one test_iter per test net ({len(sources)} test nets, "
                            f"{len(p.test_iter)} test_iter)")
            sources += generic * (len(p.test_iter) - len(sources))
        elif len(p.test_iter) != len(sources):
            raise Error(f"{self.source}: give one test_iter per test net ({len(sources)} test nets, "
                        f"{len(p.test_iter)} test_iter)")
        if p.test_state and len(p.test_state) != len(sources):
            raise Error(f"{self.source}: give one test_state per test net ({len(sources)} test nets, "
                        f"{len(p.test_state)} test_state)")
        if sources and not p.HasField("test_interval"):
            raise Error(f"{self.source}: test nets need a test_interval")
        nets = []
        for i, (value, field) in enumerate(sources):
            net = self._build(value, field, "TEST", p.test_state[i] if p.test_state else None)
            self._share_params(net)
            nets.append(net)
        return nets

    def _share_params(self, test_net):
        """Make the test net's layers use the train net's param blobs by layer name (ShareTrainedLayersWith)."""
        for name, layer in test_net.layer_dict.items():
            source = self.net.params.get(name)
            if source is None or not layer.blobs:
                continue
            if len(source) != len(layer.blobs):
                raise Error(f"{self.source}: layer '{name}' has {len(layer.blobs)} param blob(s) in the test "
                            f"net but {len(source)} in the train net")
            for i, blob in enumerate(source):
                if blob.shape != layer.blobs[i].shape:
                    raise Error(f"{self.source}: layer '{name}' param {i} has shape {layer.blobs[i].shape} "
                                f"in the test net but {blob.shape} in the train net")
                layer.blobs[i] = blob

    # -- schedule ---------------------------------------------------------------------------------------
    def override(self, **fields):
        """Set solver fields for this run (e.g. ``max_iter``), checked as the file's are and recorded in
        ``overrides``, which snapshots save and ``restore`` puts back."""
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(self.param)
        for field, value in fields.items():
            if field not in OVERRIDABLE:
                raise Error(f"{self.source}: solver field '{field}' cannot be overridden; "
                            f"only {', '.join(OVERRIDABLE)}")
            setattr(param, field, value)
        _check_param(param, self.source)
        self.param = param
        self.overrides.update(fields)
        if fields:
            log.info("Solver overrides: %s", ", ".join(f"{k} {v}" for k, v in fields.items()))

    def epoch(self):
        """Passes over the training data so far (``iter / iters_per_epoch``), or None when unknown."""
        return self.iter / self.iters_per_epoch if self.iters_per_epoch else None

    # -- training ---------------------------------------------------------------------------------------
    def lr(self):
        """The learning rate the next update uses."""
        return learning_rate(self.param, self.iter, self.current_step)[0]

    def minibatch_index(self, i):
        """The global index of this rank's pass ``i`` of the current iteration."""
        return (self.iter * self.comm.size + self.comm.rank) * self.param.iter_size + i

    def step(self, iters):
        """Run ``iters`` iterations (Solver::Step)."""
        p = self.param
        stop = self.iter + int(iters)
        while self.iter < stop:
            self.net.clear_param_diffs()
            testing = p.test_interval and self.iter % p.test_interval == 0
            if testing and (self.iter > 0 or p.test_initialization) and self.comm.rank == 0:
                self.test_all()
            losses = []
            for i in range(p.iter_size):
                backend.set_random_stream(self.seed, self.minibatch_index(i))
                self.net.forward()
                loss = self.net.loss()
                if self.parallel is not None:
                    self.parallel.before_backward(i == 0, i == p.iter_size - 1)
                self.net.backward()
                losses.append(float(loss))
            if self.parallel is not None:
                losses = self.parallel.finish(losses)
            self.pass_losses = losses
            self._update_smoothed_loss(sum(losses) / len(losses))
            if p.display and self.iter % p.display == 0:
                self._display()
            self.apply_update()
            self.iter += 1
            for callback in self.callbacks:
                callback(self)
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()

    def share_state(self):
        """Give every rank rank 0's params (all of them: BatchNorm's statistics too), momentum, iteration,
        loss window and seed (after the weights are loaded or a state restored)."""
        if self.comm.size == 1:
            return
        blobs = {id(b): b for layer_blobs in self.net.params.values() for b in layer_blobs}
        for blob in blobs.values():
            self.comm.bcast(blob.data)
        for history in self.history:
            self.comm.bcast(history)
        self.iter, self.current_step, self._losses, self.seed = self.comm.bcast_object(
            (self.iter, self.current_step, self._losses, self.seed))
        self.smoothed_loss = sum(self._losses) / len(self._losses) if self._losses else 0.0

    def solve(self, resume_file=None):
        """Train to ``max_iter`` (Solver::Solve), optionally from a .solverstate; snapshot at the end."""
        p = self.param
        log.info("Solving %s, learning rate policy: %s", self.net.name, p.lr_policy)
        if resume_file:
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.display and self.iter % p.display == 0:
            self.net.forward()
            self._update_smoothed_loss(float(self.net.loss()))
            log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0 and self.comm.rank == 0:
            self.test_all()
        log.info("Optimization done.")

    def _update_smoothed_loss(self, loss):
        """The mean of the last ``average_loss`` losses (Solver::UpdateSmoothedLoss's window)."""
        self._losses.append(loss)
        del self._losses[:-self.param.average_loss]
        self.smoothed_loss = sum(self._losses) / len(self._losses)

    def _display(self):
        outputs = []
        for name in self.net.outputs:
            value = backend.to_cpu(self.net.blobs[name].data)
            if value.size == 1:
                outputs.append(f", {name} = {float(value.reshape(())):.6g}")
        epoch = self.epoch()
        log.info("Iteration %d%s, lr = %.6g, loss = %.6g%s", self.iter,
                 "" if epoch is None else f" (epoch {epoch:.2f})", self.lr(), self.smoothed_loss, "".join(outputs))

    def apply_update(self):
        """SGDSolver::ApplyUpdate: rate, clipping, then per param Normalize, Regularize, ComputeUpdateValue,
        and ``data -= diff``, Caffe's float32 steps in Caffe's order for each element (on the CPU a block at a
        time, the blocks shared among the threads)."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        passes = p.iter_size * self.comm.size  # the gradient is the sum over this many minibatches
        self._clip_gradients()
        params = self.net.learnable_params
        for blob, history, lr_mult, decay_mult in zip(params, self.history, self.net.lr_mults,
                                                      self.net.decay_mults):
            xp = backend.get_array_module(blob.data)
            local_decay = numpy.float32(p.weight_decay) * numpy.float32(decay_mult)
            local_rate = numpy.float32(rate) * numpy.float32(lr_mult)

            def update(data, diff, history):
                if passes > 1:
                    diff *= numpy.float32(1.0 / passes)
                if local_decay:
                    diff += local_decay * (data if p.regularization_type == "L2" else xp.sign(data))
                history *= numpy.float32(p.momentum)
                history += local_rate * diff
                diff[...] = history
                data -= diff
            elementwise(xp, update, blob.data, blob.diff, history, block=UPDATE_BLOCK)

    def _clip_gradients(self):
        """Scale all diffs so that their global L2 norm is at most clip_gradients (before normalisation)."""
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float((b.diff.ravel() @ b.diff.ravel())) for b in self.net.learnable_params)
        norm = math.sqrt(sumsq)
        if norm > clip:
            log.info("Gradient clipping: scaling down gradients (L2 norm %.6g > %.6g) by scale factor %.6g",
                     norm, clip, clip / norm)
            for blob in self.net.learnable_params:
                blob.diff *= numpy.float32(clip / norm)

    # -- testing ----------------------------------------------------------------------------------------
    def test_all(self):
        """Run every test net (Solver::TestAll); returns one {output: mean value} dict per test net."""
        return [self.test(i) for i in range(len(self.test_nets))]

    def test(self, index=0):
        """Average the test net's outputs over its test_iter forwards (Solver::Test)."""
        net, iters = self.test_nets[index], self.param.test_iter[index]
        log.info("Iteration %d, testing net #%d", self.iter, index)
        sums, loss = {}, 0.0
        for _ in range(iters):
            outputs = net.forward()
            if self.param.test_compute_loss:
                loss += float(net.loss())
            for name, value in outputs.items():
                value = backend.to_cpu(value).astype(numpy.float64)
                sums[name] = sums[name] + value if name in sums else value
        if self.param.test_compute_loss:
            log.info("    Test loss: %.6g", loss / max(iters, 1))
        means = {name: total / iters for name, total in sums.items()}
        for name, value in means.items():
            log.info("    Test net output: %s = %s", name,
                     f"{float(value.reshape(())):.6g}" if value.size == 1 else value.ravel().tolist())
        return means

    # -- snapshots --------------------------------------------------------------------------------------
    def _snapshot_prefix(self):
        """snapshot_prefix; unset, the solver file's path without extension; a folder, <folder>/<solver stem>
        (Caffe's UpgradeSnapshotPrefixProperty). Under ``snapshot_dir`` when the caller set one."""
        prefix = self.param.snapshot_prefix
        if not prefix or prefix.endswith(("/", os.sep)) or os.path.isdir(self._in_snapshot_dir(prefix)):
            if self._folder is None:
                raise Error(f"{self.source}: set snapshot_prefix to take snapshots")
            stem = Path(self.source).stem
            if prefix:
                prefix = os.path.join(prefix, stem)
            else:
                prefix = stem if self.snapshot_dir else str(Path(self.source).with_suffix(""))
        return self._in_snapshot_dir(prefix)

    def _in_snapshot_dir(self, path):
        return os.path.join(self.snapshot_dir, path) if self.snapshot_dir else path

    def snapshot(self):
        """Write ``<prefix>_iter_<N>.npz`` and ``.solverstate`` (rank 0 only); returns the .solverstate path,
        which every rank keeps in ``last_snapshot``."""
        base = f"{self._snapshot_prefix()}_iter_{self.iter}"
        if self.comm.rank == 0:
            self._write_snapshot(base)
        self.last_snapshot = base + ".solverstate"
        return self.last_snapshot

    def _write_snapshot(self, base):
        weights_path, state_path = base + ".npz", base + ".solverstate"
        folder = os.path.dirname(base)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self.weights_writer(weights_path, {"iter": self.iter, "solver_overrides": self.overrides})
        meta = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "iter": self.iter,
            "current_step": self.current_step, "losses": self._losses,
            "rng_state": backend.get_rng_state(), "seed": self.seed, "weights": os.path.basename(weights_path),
            "hooks": [hook.snapshot_state() for hook in self.snapshot_hooks],
            "solver_overrides": self.overrides,
        }
        arrays = {f"history/{i}": backend.to_cpu(h) for i, h in enumerate(self.history)}
        arrays.update({f"param/{i}": backend.to_cpu(b.data) for i, b in enumerate(self.net.learnable_params)})
        weights.write_npz(state_path, arrays, meta)
        log.info("Snapshotting to %s and %s", weights_path, state_path)

    def restore(self, path):
        """Continue from a .solverstate: params, iteration, momentum, loss window, RNG, hook states and the
        solver overrides it was trained with (states written before overrides existed have none)."""
        path = str(path)
        arrays, meta = weights.read_npz(path, "solver state")
        if meta.get("format") != STATE_FORMAT:
            raise Error(f"{path}: not a fastrcnn solver state (format {meta.get('format')!r}; Caffe's "
                        "binary .solverstate files are not supported: start from the weights instead)")
        try:
            it, current_step = int(meta["iter"]), int(meta["current_step"])
            losses = [float(x) for x in meta["losses"]]
            rng_state, hooks = meta["rng_state"], list(meta["hooks"])
            overrides = dict(meta.get("solver_overrides", {}))
            seed = int(meta.get("seed", self.seed))
        except (KeyError, TypeError, ValueError) as exc:
            raise Error(f"{path}: solver state meta is incomplete or malformed ({exc!r})") from None
        restored = []
        for i, current in enumerate(self.net.learnable_params):
            pair = [arrays.get(f"history/{i}"), arrays.get(f"param/{i}")]
            if any(a is None or a.shape != current.shape for a in pair):
                found = [None if a is None else a.shape for a in pair]
                raise Error(f"{path}: momentum/param {i} have shapes {found}, but net '{self.net.name}' has "
                            f"{current.shape} (was the state saved with this prototxt?)")
            restored.append([backend.to_device(a.astype(current.dtype, copy=False)) for a in pair])
        if len(arrays) != 2 * len(restored):
            raise Error(f"{path}: holds {len(arrays)} arrays but net '{self.net.name}' has {len(restored)} "
                        "learnable params (was it saved with this prototxt?)")
        if len(hooks) != len(self.snapshot_hooks):
            raise Error(f"{path}: holds {len(hooks)} snapshot hook state(s) but the solver has "
                        f"{len(self.snapshot_hooks)} snapshot hook(s)")
        try:
            self.override(**overrides)
        except (Error, TypeError, ValueError) as exc:
            raise Error(f"{path}: bad solver_overrides {overrides!r} ({exc})") from None
        for blob, (_, value) in zip(self.net.learnable_params, restored):
            blob.data[...] = value
        history = [h for h, _ in restored]
        try:
            backend.set_rng_state(rng_state)
        except (TypeError, ValueError, KeyError) as exc:
            raise Error(f"{path}: bad random generator state ({exc})") from None
        for hook, state in zip(self.snapshot_hooks, hooks):
            hook.restore_state(state)
        self.history = history
        self.iter, self.current_step, self._losses, self.seed = it, current_step, losses, seed
        self.smoothed_loss = sum(losses) / len(losses) if losses else 0.0
        log.info("Restored %s at iteration %d", path, it)
