"""The GPU rows: detect, detect-svd and train for each model with TF32 off and on, and memory, each beside
PyTorch on the same GPU (see scripts/bench.py), with the spec's targets for VGG16 (L).

Our nets are built and He-filled on the CPU exactly as the CPU rows' (``models.Model``), then rebuilt in GPU
mode with the same weights; the twin copies the same weights to the GPU. A row that fails (a GPU layer
missing or wrong) is recorded with its error and the run goes on, so that one run reports every row.
CuPy and PyTorch's CUDA are imported only by ``rows`` (never by ``plan``).
"""
import contextlib
import gc
import sys
import traceback

from fastrcnn import backend
from fastrcnn.backend import to_cpu
from fastrcnn.net import Net
from fastrcnn.rcnn.detect import im_detect

from .core import Row, time_runs
from .models import Model, Sizes, conv_flops, copy_params, he_fill, prototxt, relative_error, train_flops, train_net
from .report import format_gpu_row, print_gpu_table
from .twins import NetAdapter, TorchTwin, check_train, optional_torch, train_step

KINDS = ("detect", "detect-svd", "train")
#: A row's implementation repeats its timed calls until they fill this many seconds (0 with --quick).
MIN_SECONDS = 0.5
GB = 1e9
#: The spec's targets, for VGG16 with float32 arithmetic (TF32 off): (row, model) -> what passes.
TARGETS = {
    ("detect", "L"): "<= 20 ms per image and <= 1.0x PyTorch's time",
    ("train", "L"): "<= 60 ms per iteration",
    ("memory", "L"): "peak training memory < 8 GB",
}


def _tf32_label(tf32):
    return "on" if tf32 else "off"


def plan(args):
    """The rows a GPU run makes ("kind model TF32 on|off: implementations"), in order."""
    lines = []
    for name in args.models:
        kinds = [k for k in KINDS if k != "detect-svd" or prototxt(name, "compressed/test.prototxt").exists()]
        for tf32 in (False, True):
            for kind in kinds:
                target = TARGETS.get((kind, name)) if not tf32 else None
                lines.append(f"{kind} {name} TF32 {_tf32_label(tf32)}: fastrcnn, torch"
                             + (f"; target {target}" if target else ""))
        target = TARGETS.get(("memory", name))
        lines.append(f"memory {name} TF32 off: fastrcnn, torch (detection and training peaks)"
                     + (f"; target {target}" if target else ""))
    return lines


def missing(args):
    """Why GPU rows cannot run here (CuPy or a CUDA device missing), or None."""
    try:
        backend.set_mode_gpu()
    except Exception as exc:  # noqa: BLE001  (fastrcnn.Error, or CUDA's own errors)
        return f"the GPU rows need CuPy and a CUDA GPU: {exc}"
    finally:
        backend.set_mode_cpu()
    return None


def tf32_switch():
    """fastrcnn's TF32 switch (``fastrcnn.set_tf32`` or ``fastrcnn.backend.set_tf32``), or None."""
    import fastrcnn
    return getattr(fastrcnn, "set_tf32", None) or getattr(backend, "set_tf32", None)


def set_torch_tf32(torch, flag):
    """PyTorch's TF32 switches for matrix products and cuDNN convolutions, both to ``flag``."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch 2.9 and later
        torch.backends.cuda.matmul.fp32_precision = "tf32" if flag else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if flag else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = flag
        torch.backends.cudnn.allow_tf32 = flag


def cupy_clock(cupy):
    """Seconds of one call, read from CUDA events on CuPy's current stream after the device synchronised."""
    def clock(fn):
        stream = cupy.cuda.get_current_stream()
        cupy.cuda.Device().synchronize()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3
    return clock


def torch_clock(torch):
    """Seconds of one call, read from CUDA events on PyTorch's current stream after a synchronisation."""
    def clock(fn):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    return clock


@contextlib.contextmanager
def cpu_mode():
    """Build (and He-fill) on the CPU, exactly as the CPU rows do; back to GPU mode afterwards."""
    backend.set_mode_cpu()
    try:
        yield
    finally:
        backend.set_mode_gpu()


def to_gpu(cpu_net, source):
    """``source`` (a prototxt path or NetParameter) built in GPU mode with ``cpu_net``'s weights."""
    net = Net(source if not hasattr(source, "is_file") else str(source), cpu_net.phase)
    copy_params(cpu_net, net)
    return net


def max_error(values, references):
    return max(relative_error(to_cpu(v), to_cpu(r)) for v, r in zip(values, references))


def judge(row):
    """The row's target, if the spec sets one for it: {"text", "status": pass | miss | n/a}."""
    text = TARGETS.get((row["row"], row["model"]))
    if text is None or row.get("tf32"):
        return None
    status = "n/a"
    if "error" not in row:
        if row["row"] == "memory":
            # the larger of the pool's peak and the device's use (cuDNN or cuBLAS may allocate outside the pool)
            peak = max(row["peak_mib"]["fastrcnn"]["train"], row["device_used_mib"]["fastrcnn"]["train"])
            status = "pass" if peak * 2 ** 20 < 8 * GB else "miss"
        else:
            ours = row["results"]["fastrcnn"]["median_s"]
            if row["row"] == "detect":
                ratio = row["results"].get("torch", {}).get("ratio")
                status = "n/a" if ratio is None else ("pass" if ours <= 0.020 and ratio <= 1.0 else "miss")
            else:
                status = "pass" if ours <= 0.060 else "miss"
    return {"text": text, "status": status}


class GpuBench:
    def __init__(self, ctx):
        import cupy
        self.ctx, self.args, self.cupy = ctx, ctx.args, cupy
        self.sizes = Sizes(self.args.quick)
        self.sizes.image = self.sizes.memory_image  # 600×1000: detection and training images alike
        self.rows, self.notes = [], ctx.notes
        self.clock = cupy_clock(cupy)
        self.set_tf32 = tf32_switch()
        if self.set_tf32 is None:
            self.notes.append("fastrcnn.set_tf32 is missing in this version: the TF32-on rows are skipped")
        self.torch = optional_torch()
        reason = None
        if self.torch is None:
            reason = "PyTorch is not installed"
        elif not self.torch.cuda.is_available():
            reason = "PyTorch has no CUDA device here"
        else:
            try:
                import torchvision.ops  # noqa: F401  (the twin's RoI pooling)
            except ImportError:
                reason = "torchvision (the twin's RoI pooling) is not installed"
        if reason:
            self.notes.append(f"{reason}: the PyTorch columns are skipped")
            self.torch = None
        else:
            self.torch_clock = torch_clock(self.torch)
            self.device = self.torch.device("cuda", self.cupy.cuda.Device().id)

    def time(self, fn, clock):
        return time_runs(fn, self.args.runs, min_seconds=0.0 if self.args.quick else MIN_SECONDS, clock=clock)

    def record(self, data):
        target = judge(data)
        if target:
            data["target"] = target
        self.rows.append(data)
        self.ctx.log(format_gpu_row(data))
        self.ctx.recorded(data)

    def guarded(self, kind, name, tf32, workload, fn):
        """Record fn()'s row, or on any failure a row holding the error (the traceback goes to the log)."""
        try:
            data = fn()
        except Exception as exc:  # noqa: BLE001  (every failure of a GPU row is reported, then the next runs)
            self.failed(kind, name, tf32, workload, exc)
            return
        data["device"], data["tf32"] = "gpu", tf32
        self.record(data)

    def failed(self, kind, name, tf32, workload, exc):
        traceback.print_exc(file=sys.stderr)
        self.record({"row": kind, "model": name, "workload": workload, "results": {}, "notes": [],
                     "error": f"{type(exc).__name__}: {exc}", "device": "gpu", "tf32": tf32})

    def tf32(self, flag):
        if self.set_tf32 is not None:
            self.set_tf32(flag)
        if self.torch is not None:
            set_torch_tf32(self.torch, flag)

    # -- one model --
    def model_rows(self, name):
        self.ctx.log(f"== {name} (GPU)")
        h, w = self.sizes.image_for(name)
        detect_workload = f"{h}x{w}, {self.sizes.rois} proposals"
        train_workload = f"2x{h}x{w}, {self.sizes.train_rois} RoIs"
        with cpu_mode():
            model = Model(name, self.sizes)
            svd = model.svd_net(factorise=False)
            train_cpu, net_param, inputs = train_net(name, self.sizes)
            he_fill(train_cpu, 0)
        nets = {"detect": (to_gpu(model.net, prototxt(name)), model.net)}
        if svd is not None:
            nets["detect-svd"] = (to_gpu(svd, prototxt(name, "compressed/test.prototxt")), svd)
        train_gpu = to_gpu(train_cpu, net_param)
        twins = {kind: TorchTwin(self.torch, cpu, device=self.device) for kind, (_, cpu) in nets.items()} \
            if self.torch else {}
        for tf32 in (False, True) if self.set_tf32 is not None else (False,):
            self.tf32(tf32)
            for kind, (net, _) in nets.items():
                self.guarded(kind, name, tf32, detect_workload,
                             lambda: self.detect(kind, model, net, twins.get(kind), detect_workload))
            self.guarded("train", name, tf32, train_workload,
                         lambda: self.train(name, train_gpu, train_cpu, inputs, net_param, train_workload))
        self.tf32(False)
        del nets, twins, train_gpu
        self.guarded("memory", name, False, "one detection and one training iteration",
                     lambda: self.memory(name, model, train_cpu, net_param, inputs))

    def detect(self, kind, model, net, twin, workload):
        def ours():
            return im_detect(net, model.image, model.boxes, model.cfg)
        reference = ours()
        row = Row(kind, model.name, workload, conv_flops(net))
        row.add("fastrcnn", self.time(ours, self.clock))
        if twin:
            torch = self.torch

            def forward(data, rois):
                out = twin.forward({"data": data, "rois": rois})
                return {k: out[k].cpu().numpy() for k in ("cls_prob", "bbox_pred")}
            adapter = NetAdapter(f"{model.name} (PyTorch, CUDA)", forward)
            with torch.inference_mode():
                run = lambda: im_detect(adapter, model.image, model.boxes, model.cfg)  # noqa: E731
                row.add("torch", self.time(run, self.torch_clock), max_error(run(), reference))
        row.note("im_detect end to end: image resize and box decoding on the host, as in use")
        return row.finish()

    def train(self, name, net, cpu_net, inputs, net_param, workload):
        cupy = self.cupy
        on_gpu = {k: cupy.asarray(v) for k, v in inputs.items()}

        def ours():
            net.clear_param_diffs()
            net.forward(**on_gpu)
            net.backward()
        ours()
        row = Row("train", name, workload, train_flops(net))
        row.add("fastrcnn", self.time(ours, self.clock))
        if self.torch:
            twin, run = train_step(self.torch, cpu_net, net_param, inputs, self.device)
            check = check_train(name, self.sizes, net, on_gpu, twin, run)
            row.add("torch", self.time(run, self.torch_clock), check)
            row.note("checked with dropout off: the loss, and every parameter gradient norm-wise")
        row.note("one iteration: forward + backward, no parameter update; the minibatch already on the GPU")
        return row.finish()

    # -- memory --
    def _our_peak(self, build, run):
        """(the memory pool's high-water mark, the device's used memory after the run), MiB, above what was
        in use before ``build``; the pool keeps what it allocated until free_all_blocks."""
        cupy = self.cupy
        pool = cupy.get_default_memory_pool()
        gc.collect()
        pool.free_all_blocks()
        base_pool, base_used = pool.total_bytes(), device_used(cupy)
        obj = build()
        run(obj)
        cupy.cuda.Device().synchronize()
        peak = ((pool.total_bytes() - base_pool) / 2 ** 20, (device_used(cupy) - base_used) / 2 ** 20)
        del obj
        gc.collect()
        pool.free_all_blocks()
        return peak

    def _torch_peak(self, build, run):
        """(PyTorch's caching allocator's peak reserved memory, the device's used memory after the run), MiB."""
        torch, cupy = self.torch, self.cupy
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_reserved, base_used = torch.cuda.memory_reserved(), device_used(cupy)
        obj = build()
        run(obj)
        torch.cuda.synchronize()
        peak = ((torch.cuda.max_memory_reserved() - base_reserved) / 2 ** 20,
                (device_used(cupy) - base_used) / 2 ** 20)
        del obj
        gc.collect()
        torch.cuda.empty_cache()
        return peak

    def memory(self, name, model, train_cpu, net_param, inputs):
        row = {"row": "memory", "model": name, "workload": "one detection and one training iteration", "peak_mib": {}, "device_used_mib": {}, "notes": [
            "peak_mib: fastrcnn, CuPy's memory pool high-water mark; torch, the caching allocator's peak "
            "reserved memory; device_used_mib: the device's used memory (cudaMemGetInfo) after the run, above "
            "the start; weights count; TF32 off"]}
        cupy = self.cupy

        def detect(net):
            im_detect(net, model.image, model.boxes, model.cfg)

        def train(net):
            net.clear_param_diffs()
            net.forward(**{k: cupy.asarray(v) for k, v in inputs.items()})
            net.backward()
        phases = {"detect": (lambda: to_gpu(model.net, prototxt(name)), detect),
                  "train": (lambda: to_gpu(train_cpu, net_param), train)}
        impls = {"fastrcnn": self._our_peak}
        if self.torch:
            torch = self.torch

            def twin_detect(twin):
                with torch.inference_mode():
                    twin.forward({"data": model.data, "rois": model.rois})

            impls["torch"] = self._torch_peak
            torch_phases = {"detect": (lambda: TorchTwin(torch, model.net, device=self.device), twin_detect),
                            "train": (lambda: train_step(torch, train_cpu, net_param, inputs, self.device)[1],
                                      lambda run: run())}
        for impl, measure in impls.items():
            row["peak_mib"][impl], row["device_used_mib"][impl] = {}, {}
            for phase, (build, run) in (phases if impl == "fastrcnn" else torch_phases).items():
                peak, used = measure(build, run)
                row["peak_mib"][impl][phase], row["device_used_mib"][impl][phase] = peak, used
        return row


def device_used(cupy):
    free, total = cupy.cuda.runtime.memGetInfo()
    return total - free


def rows(ctx):
    """Every GPU row, model by model (GPU mode for the run; the CPU mode again at the end)."""
    backend.set_mode_gpu()
    try:
        bench = GpuBench(ctx)
        for name in ctx.args.models:
            try:
                bench.model_rows(name)
            except Exception as exc:  # noqa: BLE001  (a model that cannot even be built: its error is a row)
                bench.failed("setup", name, False, "building the nets", exc)
            gc.collect()
            bench.cupy.get_default_memory_pool().free_all_blocks()
    finally:
        backend.set_mode_cpu()
    return bench.rows


def settings(args):
    """The sizes, the GPU and the libraries, and the targets."""
    sizes = Sizes(args.quick)
    out = {"image": sizes.memory_image, "rois": sizes.rois, "train_rois": sizes.train_rois,
           "targets": {f"{kind} {model}": text for (kind, model), text in TARGETS.items()},
           "tf32_switch": tf32_switch() is not None}
    try:
        import cupy
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        out["gpu"] = {"name": name.decode() if isinstance(name, bytes) else name, "id": device.id,
                      "memory_mib": props["totalGlobalMem"] / 2 ** 20, "cupy": cupy.__version__,
                      "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    except Exception as exc:  # noqa: BLE001
        out["gpu"] = {"error": str(exc)}
    torch = optional_torch()
    if torch is not None:
        out["gpu"]["torch"] = torch.__version__
        out["gpu"]["torch_cuda"] = torch.version.cuda
        out["gpu"]["torch_cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
        out["gpu"]["torch_cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return out


table = print_gpu_table
