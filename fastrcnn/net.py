"""Net: a NetParameter turned into a layer graph, as Caffe's Net::Init (src/caffe/net.cpp).

Init keeps the layers whose include/exclude rules match the state (phase, level, stages), inserts a Split
layer for every blob read more than once (insert_splits.cpp), wires in-place layers, shares parameters by
``ParamSpec.name``, and works out which layers need backward: none that contribute to no loss, none whose
only inputs are data and whose params are frozen (a frozen conv1 costs nothing).
"""
import collections
import time

import numpy

from . import protoio
from .backend import array_module, upload
from .blob import Blob
from .errors import Error
from .layers import REGISTRY, create_layer
from .parallel import section

_PHASE_NAMES = {"TRAIN": "TRAIN", "TEST": "TEST", 0: "TRAIN", 1: "TEST"}


def phase_name(phase):
    """'TRAIN' or 'TEST' from a name (any case) or Caffe's Phase number."""
    key = phase.upper() if isinstance(phase, str) else phase
    try:
        return _PHASE_NAMES[key]
    except (KeyError, TypeError):
        raise Error(f"phase must be 'TRAIN' or 'TEST', got {phase!r}") from None


def _rule_matches(rule, phase, level, stages):
    """NetStateRule semantics (Net::StateMeetsRule)."""
    if rule.HasField("phase") and phase_name(rule.phase) != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_layers(layers, phase, level, stages):
    """The layers included in this state (Net::FilterNet)."""
    kept = []
    for lp in layers:
        if lp.include and lp.exclude:
            raise Error(f"layer '{lp.name}': specify either include or exclude rules, not both")
        if lp.include:
            keep = any(_rule_matches(r, phase, level, stages) for r in lp.include)
        else:
            keep = not any(_rule_matches(r, phase, level, stages) for r in lp.exclude)
        if keep:
            kept.append(lp)
    return kept


def _loss_weights(lp):
    """Per-top loss weights: explicit ones, else 1 on the first top of a loss layer (LossLayer::LayerSetUp)."""
    n = len(lp.top)
    if lp.loss_weight:
        if len(lp.loss_weight) != n:
            raise Error(f"layer '{lp.name}': loss_weight must be given once per top ({n}), "
                        f"got {len(lp.loss_weight)}")
        return list(lp.loss_weight)
    cls = REGISTRY.get(lp.type)
    return [1.0 if (cls is not None and cls.is_loss and i == 0) else 0.0 for i in range(n)]


def _split_layer(blob, producer, top_index, count, loss_weight):
    from .proto import caffe_pb2
    base = f"{blob}_{producer}_{top_index}_split"
    lp = caffe_pb2.LayerParameter(name=base, type="Split", bottom=[blob],
                                  top=[f"{base}_{k}" for k in range(count)])
    return lp, [loss_weight] + [0.0] * (count - 1)


def insert_splits(layers):
    """Give every blob that is read more than once its own Split layer (insert_splits.cpp).

    ``layers`` is a list of (LayerParameter, loss_weights); a non-zero loss weight counts as one reader
    and moves to the split's first top. Returns a new list; the inputs are not modified.
    """
    last_top = {}
    source = {}
    readers = collections.Counter()
    for i, (lp, weights) in enumerate(layers):
        for j, name in enumerate(lp.bottom):
            if name not in last_top:
                raise Error(f"layer '{lp.name}' ({lp.type}): bottom blob '{name}' is produced by no layer "
                            "before it (check the bottom and top names, and the include/exclude rules)")
            source[(i, j)] = last_top[name]
            readers[last_top[name]] += 1
        for j, name in enumerate(lp.top):
            last_top[name] = (i, j)
        for j, w in enumerate(weights):
            if w:
                readers[(i, j)] += 1
    out = []
    next_split = collections.Counter()
    for i, (lp, weights) in enumerate(layers):
        copy = type(lp)()
        copy.CopyFrom(lp)
        weights = list(weights)
        for j, name in enumerate(lp.bottom):
            src = source[(i, j)]
            if readers[src] > 1:
                producer = layers[src[0]][0]
                copy.bottom[j] = f"{name}_{producer.name}_{src[1]}_split_{next_split[src]}"
                next_split[src] += 1
        splits = []
        for j, name in enumerate(lp.top):
            if readers[(i, j)] > 1:
                splits.append(_split_layer(name, lp.name, j, readers[(i, j)], weights[j]))
                if weights[j]:
                    next_split[(i, j)] += 1  # the loss weight is the split's first reader
                weights[j] = 0.0
        out.append((copy, weights))
        out.extend(splits)
    return out


def _input_layer(net_param):
    """The legacy ``input``/``input_shape`` fields as an Input layer (Caffe's UpgradeNetInput)."""
    from .proto import caffe_pb2
    if not net_param.input:
        return []
    if len(net_param.input_shape) != len(net_param.input):
        raise Error(f"net '{net_param.name}': {len(net_param.input)} input(s) but {len(net_param.input_shape)} "
                    "input_shape(s); give one input_shape per input")
    lp = caffe_pb2.LayerParameter(name="input", type="Input", top=list(net_param.input))
    for shape in net_param.input_shape:
        lp.input_param.shape.add().CopyFrom(shape)
    return [lp]


class Net:
    """A network built from a prototxt, as pycaffe's ``caffe.Net``.

    ``Net(model_file, phase="TEST", weights=None, stages=(), level=0)``; ``model_file`` may also be a
    NetParameter. ``blobs`` and ``params`` are ordered mappings; ``forward(**inputs)`` returns the output
    blobs; ``backward(**top_diffs)`` returns the input diffs.
    """

    def __init__(self, model_file, phase="TEST", weights=None, stages=(), level=0):
        self.phase = phase_name(phase)
        #: Set to a collections.defaultdict(float) to accumulate forward seconds per layer name.
        self.timings = None
        #: Set to a function of the layer index, called as backward leaves each layer (run or skipped).
        self.after_backward = None
        net_param = protoio.load_net(model_file)
        self.name = net_param.name
        self.source = model_file if isinstance(model_file, str) else f"<net '{net_param.name}'>"
        stages = tuple(stages)
        kept = filter_layers(_input_layer(net_param) + list(net_param.layer), self.phase, int(level), stages)
        self._build(insert_splits([(lp, _loss_weights(lp)) for lp in kept]), net_param.force_backward)
        if weights is not None:
            missing = self.copy_from(weights)
            if missing and self.phase == "TEST":
                raise Error(f"weights file '{weights}' has no weights for learnable layer(s) "
                            f"{', '.join(missing)} of net '{self.source}'; a TEST net needs them all "
                            "(was the file trained with this prototxt?)")

    # -- construction ---------------------------------------------------------------------------------
    def _build(self, layers, force_backward):
        self.blobs = collections.OrderedDict()
        self.params = collections.OrderedDict()
        self.layers, self.layer_names = [], []
        self._bottoms, self._tops, self._loss = [], [], []
        self.inputs = []
        self.learnable_params, self.lr_mults, self.decay_mults = [], [], []
        self._param_owners = {}
        self._producer = {}
        consumed = set()
        for lp, weights in layers:
            if lp.name in self.layer_names:
                raise Error(f"{self.source}: two layers are named '{lp.name}'; layer names must be unique")
            layer = create_layer(lp, self.phase)
            bottoms = [self.blobs[name] for name in lp.bottom]
            tops = []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == name:
                    tops.append(self.blobs[name])  # in place
                elif name in self.blobs:
                    producer = self._producer.get(name, lp.name)  # not yet recorded: a top listed twice
                    raise Error(f"layer '{lp.name}' ({lp.type}): top blob '{name}' is already produced by "
                                f"layer '{producer}' (only an in-place layer, whose top i equals "
                                "its bottom i, may write a blob again)")
                else:
                    self.blobs[name] = Blob(name=name)
                    tops.append(self.blobs[name])
            consumed.update(lp.bottom)
            for name in lp.top:
                self._producer[name] = lp.name
                consumed.discard(name)
            layer.check_blob_counts(bottoms, tops)
            self._guarded(layer, lp, bottoms, layer.setup, tops)
            self._guarded(layer, lp, bottoms, layer.reshape, tops)
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            self._bottoms.append(bottoms)
            self._tops.append(tops)
            self._loss.append(weights)
            self._append_params(layer, lp)
        self.outputs = sorted(name for name in self.blobs if name not in consumed and name not in self.inputs)
        self._plan_backward(layers, force_backward)
        self._fill_loss_diffs()

    def _guarded(self, layer, lp, bottoms, step, tops):
        """Run a layer's setup/reshape; errors gain the shapes of its bottoms and who produced them."""
        try:
            step(bottoms, tops)
        except Error as exc:
            origin = "; ".join(f"bottom '{n}' {tuple(b.shape)} from layer '{self._producer.get(n, '?')}'"
                               for n, b in zip(lp.bottom, bottoms))
            raise Error(f"{exc}" + (f" [{origin}]" if origin else "")) from None

    def _append_params(self, layer, lp):
        """Register a layer's param blobs; a ParamSpec name shared with an earlier layer aliases its blob."""
        from .proto import caffe_pb2
        if not layer.blobs:
            layer.param_propagate_down = []
            return
        self.params[lp.name] = layer.blobs
        layer.param_propagate_down = []
        for i, blob in enumerate(layer.blobs):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            layer.param_propagate_down.append(spec.lr_mult != 0)
            if spec.name and spec.name in self._param_owners:
                owner_layer, owner_spec, owner = self._param_owners[spec.name]
                strict = spec.share_mode != caffe_pb2.ParamSpec.PERMISSIVE
                if (owner.shape != blob.shape) if strict else (owner.count != blob.count):
                    raise Error(f"layer '{lp.name}': shared parameter '{spec.name}' has shape {blob.shape}, "
                                f"but its owner layer '{owner_layer}' has shape {owner.shape}")
                for field in ("lr_mult", "decay_mult"):
                    if (spec.HasField(field) and owner_spec.HasField(field)
                            and getattr(spec, field) != getattr(owner_spec, field)):
                        raise Error(f"layer '{lp.name}': shared parameter '{spec.name}' has {field} "
                                    f"{getattr(spec, field)}, but layer '{owner_layer}' gives it "
                                    f"{getattr(owner_spec, field)}")
                layer.blobs[i] = owner
                continue
            if spec.name:
                self._param_owners[spec.name] = (lp.name, spec, blob)
            self.learnable_params.append(blob)
            self.lr_mults.append(spec.lr_mult)
            self.decay_mults.append(spec.decay_mult)

    def _plan_backward(self, layers, force_backward):
        """Which layers and bottoms need backward (Net::Init's need_backward and loss sweeps)."""
        blob_need = collections.defaultdict(bool)
        self._layer_need_backward = []
        self._bottom_need_backward = []
        for (lp, _), layer in zip(layers, self.layers):
            need = any(layer.param_propagate_down)
            flags = []
            for j, name in enumerate(lp.bottom):
                flag = blob_need[name]
                need = need or flag
                if lp.propagate_down:
                    if len(lp.propagate_down) != len(lp.bottom):
                        raise Error(f"layer '{lp.name}': propagate_down must be given once per bottom "
                                    f"({len(lp.bottom)}), got {len(lp.propagate_down)}")
                    flag = bool(lp.propagate_down[j])
                flags.append(flag)
            for name in lp.top:
                blob_need[name] = need
            self._layer_need_backward.append(need)
            self._bottom_need_backward.append(flags)
        under_loss, skip = set(), set()
        for i in reversed(range(len(self.layers))):
            lp = layers[i][0]
            contributes = any(w != 0 for w in self._loss[i]) or any(t in under_loss for t in lp.top)
            skip_down = all(t in skip for t in lp.top)
            if self._layer_need_backward[i] and skip_down and lp.top:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(lp.bottom)
            if not contributes:
                self._layer_need_backward[i] = False
            for j, name in enumerate(lp.bottom):
                if contributes:
                    under_loss.add(name)
                else:
                    self._bottom_need_backward[i][j] = False
                if not self._bottom_need_backward[i][j]:
                    skip.add(name)
        if force_backward:
            for i, layer in enumerate(self.layers):
                self._layer_need_backward[i] = True
                self._bottom_need_backward[i] = [f or layer.allow_force_backward(j)
                                                 for j, f in enumerate(self._bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer, need in zip(self.layers, self._layer_need_backward):
            layer.need_backward = need

    def _fill_loss_diffs(self):
        """Loss tops carry their loss weight in diff (Layer::SetLossWeights), the seed of backward."""
        for tops, weights in zip(self._tops, self._loss):
            for top, w in zip(tops, weights):
                if w:
                    top.diff[...] = w

    # -- running --------------------------------------------------------------------------------------
    def _index(self, name, default):
        if name is None:
            return default
        try:
            return self.layer_names.index(name)
        except ValueError:
            raise Error(f"net '{self.name}' has no layer named '{name}'") from None

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """Set the given inputs, run the layers from ``start`` to ``end`` (names, inclusive) and return
        {name: data} for the net outputs and any extra ``blobs`` asked for."""
        unknown = [b for b in (blobs or ()) if b not in self.blobs]
        if unknown:
            raise Error(f"net '{self.name}' has no blob(s) {', '.join(map(repr, unknown))} to return")
        for name, value in inputs.items():
            if name not in self.blobs:
                raise Error(f"net '{self.name}' has no blob '{name}' to set (inputs: {', '.join(self.inputs)})")
            if not hasattr(value, "__cuda_array_interface__"):
                try:
                    value = numpy.asarray(value, dtype=self.blobs[name].dtype)
                except (TypeError, ValueError) as exc:
                    raise Error(f"net '{self.name}': input '{name}' is not an array of numbers ({exc})") from None
            self.blobs[name].reshape(value.shape)
            upload(self.blobs[name].data, value)
        lo, hi = self._index(start, 0), self._index(end, len(self.layers) - 1)
        with section(array_module()):
            for i in range(lo, hi + 1):
                self._run_forward(i)
        self._fill_loss_diffs()
        names = list(self.outputs) + [b for b in (blobs or ()) if b not in self.outputs]
        return {name: self.blobs[name].data for name in names}

    def _run_forward(self, i):
        layer, bottoms, tops = self.layers[i], self._bottoms[i], self._tops[i]
        start = time.perf_counter() if self.timings is not None else None
        self._guarded(layer, layer.param, bottoms, layer.reshape, tops)
        layer.forward(bottoms, tops)
        if start is not None:
            self.timings[self.layer_names[i]] += time.perf_counter() - start

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """Set the given top diffs, run backward from ``start`` down to ``end`` and return
        {name: diff} for the net inputs and any extra ``diffs`` asked for."""
        for name, value in top_diffs.items():
            if name not in self.blobs:
                raise Error(f"net '{self.name}' has no blob '{name}' (outputs: {', '.join(self.outputs)})")
            self.blobs[name].diff = value
        hi, lo = self._index(start, len(self.layers) - 1), self._index(end, 0)
        with section(array_module()):
            for i in range(hi, lo - 1, -1):
                if self._layer_need_backward[i]:
                    self.layers[i].backward(self._tops[i], self._bottom_need_backward[i], self._bottoms[i])
                if self.after_backward is not None:
                    self.after_backward(i)
        names = list(self.inputs) + [d for d in (diffs or ()) if d not in self.inputs]
        return {name: self.blobs[name].diff for name in names}

    def loss(self):
        """The weighted sum of the loss tops after a forward, Σ loss_weight · Σ top (Layer::Forward)."""
        total = 0.0
        for tops, weights in zip(self._tops, self._loss):
            for top, w in zip(tops, weights):
                if w:
                    total = total + w * top.data.sum()
        return total

    def forward_backward(self):
        """One forward and backward pass; returns the loss (a scalar array on the device)."""
        self.forward()
        loss = self.loss()
        self.backward()
        return loss

    def clear_param_diffs(self):
        for blob in self.learnable_params:
            blob.diff[...] = 0

    # -- weights --------------------------------------------------------------------------------------
    def copy_from(self, path):
        """Load weights by layer name from a .caffemodel or .npz; returns the learnable layers left empty."""
        from . import weights
        return weights.load_weights(self, path)

    def save(self, path, meta=None):
        """Write the weights to ``path``: .npz or .caffemodel by extension."""
        from . import weights
        weights.save_weights(self, path, meta=meta)

    @property
    def layer_dict(self):
        return collections.OrderedDict(zip(self.layer_names, self.layers))

    def bottom_names(self, layer_name):
        return list(self.layer_dict[layer_name].param.bottom)

    def top_names(self, layer_name):
        return list(self.layer_dict[layer_name].param.top)
