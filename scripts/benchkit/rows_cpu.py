"""The CPU rows: gemm, and per model trunk, roi, roi-train, head, detect, detect-svd, export, ort-detect,
train and memory (see scripts/bench.py)."""
import gc
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from fastrcnn import protoio
from fastrcnn.net import Net
from fastrcnn.rcnn.detect import im_detect
from fastrcnn.weights import save_weights

from .core import MIN_SECONDS, Row, time_runs
from .models import (MODELS, TRAIN_MODELS, Model, Sizes, conv_flops, copy_params, detect_config, he_fill, prototxt,
                     random_boxes, random_image, relative_error, roi_compares, train_flops, train_net)
from .report import format_memory, format_row, print_cpu_table
from .twins import (NetAdapter, TorchTwin, check_train, last_writer, opencv_net, opencv_prototxt, optional_cv2,
                    optional_torch, set_threads, torch_roi_pool, train_step)


def plan(args):
    """The rows a CPU run makes, in order ("kind model: implementations")."""
    lines = ["gemm -: fastrcnn (NumPy's BLAS), torch"]
    for name in args.models:
        lines += [f"{kind} {name}: {impls}" for kind, impls in (
            ("trunk", "fastrcnn, torch, opencv"), ("roi", "fastrcnn, torch"), ("roi-train", "fastrcnn, torch"),
            ("head", "fastrcnn, torch"), ("detect", "fastrcnn, torch, opencv"))]
        if prototxt(name, "compressed/test.prototxt").exists():
            lines.append(f"detect-svd {name}: fastrcnn, torch")
        if name == "S":
            lines += [f"export {name}: fastrcnn", f"ort-detect {name}: fastrcnn, onnxruntime"]
        if name in TRAIN_MODELS:
            lines.append(f"train {name}: fastrcnn, torch")
    lines += [f"memory {name}: fastrcnn, torch, opencv (fresh processes)" for name in args.models]
    return lines + ["gemm-end -: fastrcnn, torch"]


def rows(ctx):
    """Every CPU row: gemm, each model's rows, each model's memory, gemm-end."""
    set_threads(ctx.args.threads)
    bench = Bench(ctx, Sizes(ctx.args.quick))
    bench.gemm()
    for name in ctx.args.models:
        bench.model_rows(name)
        gc.collect()
    for name in ctx.args.models:
        bench.memory(name)
    bench.gemm("gemm-end")
    return bench.rows


def settings(args):
    sizes = Sizes(args.quick)
    return {"image": sizes.image, "toy_image": sizes.toy_image, "memory_image": sizes.memory_image,
            "rois": sizes.rois, "train_rois": sizes.train_rois}


table = print_cpu_table


class Bench:
    def __init__(self, ctx, sizes):
        self.ctx, self.args, self.sizes, self.workdir = ctx, ctx.args, sizes, ctx.workdir
        self.torch, self.cv2 = optional_torch(), optional_cv2()
        self.rows, self.notes = [], ctx.notes
        if not self.torch:
            self.notes.append("PyTorch is not installed (pip install '.[bench]'): its columns are skipped")
        if not self.cv2:
            self.notes.append("OpenCV dnn (cv2.dnn.readNetFromCaffe, OpenCV 4) is missing: its columns are skipped")

    def log(self, text):
        self.ctx.log(text)

    def time(self, fn):
        """time_runs with --runs, repeated up to MIN_SECONDS except with --quick."""
        return time_runs(fn, self.args.runs, min_seconds=0.0 if self.args.quick else MIN_SECONDS)

    def record(self, row):
        data = row.finish()
        self.rows.append(data)
        self.log(format_row(data))
        self.ctx.recorded(data)

    # -- gemm --
    def gemm(self, kind="gemm"):
        """NumPy's BLAS on one large product, the rate the GEMM-bound rows aim at; measured first and again
        last ("gemm-end"), as a check that the machine ran at one speed throughout."""
        n = self.sizes.gemm
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        c = np.empty_like(a)
        row = Row(kind, "-", f"{n}x{n}x{n} float32", 2 * n ** 3)
        row.add("fastrcnn", self.time(lambda: np.matmul(a, b, out=c)))
        if self.torch:
            ta, tb = self.torch.from_numpy(a), self.torch.from_numpy(b)
            with self.torch.inference_mode():
                row.add("torch", self.time(lambda: self.torch.mm(ta, tb)))
        self.record(row)

    # -- one model --
    def model_rows(self, name):
        self.log(f"== {name} ({MODELS[name]})")
        model = Model(name, self.sizes)
        model.forward_all()
        twin = TorchTwin(self.torch, model.net) if self.torch else None
        weights = None
        if self.cv2:
            weights = self.workdir / f"{name}.caffemodel"
            save_weights(model.net, str(weights))
        self.trunk(model, twin, weights)
        self.roi(model)
        self.head(model, twin)
        self.detect(model, twin, weights)
        svd = model.svd_net()
        if svd is not None:
            self.detect(model, TorchTwin(self.torch, svd) if self.torch else None, None, svd)
        del svd, twin
        gc.collect()
        if name == "S":
            self.onnx(model)
        if name in TRAIN_MODELS:
            self.train(name)
        return model

    def trunk(self, model, twin, weights):
        net = model.net
        h, w = model.data.shape[2:]
        row = Row("trunk", model.name, f"{h}x{w}", conv_flops(net, 0, model.roi_index - 1))
        ours = lambda: net.forward(blobs=[model.features], data=model.data, end=model.trunk_end)  # noqa: E731
        reference = np.array(ours()[model.features], copy=True)
        row.add("fastrcnn", self.time(ours))
        if twin:
            with self.torch.inference_mode():
                run = lambda: twin.forward({"data": model.data}, end=model.trunk_end)[model.features]  # noqa: E731
                row.add("torch", self.time(run), relative_error(run().numpy(), reference))
        if weights:
            path, net_param = opencv_prototxt(model.name, self.workdir, model.trunk_end)
            cv_net = opencv_net(self.cv2, path, weights)
            output = last_writer(net_param, model.features)

            def run():
                cv_net.setInput(model.data, "data")
                return cv_net.forward(output)
            check = relative_error(run(), reference) if model.name != "M" else None
            row.add("opencv", self.time(run), check)
            if model.name == "M":
                row.note("OpenCV runs M's LRN with k = 1 (its importer ignores k): not compared")
        self.record(row)

    def roi(self, model):
        """RoI pooling alone, in a net of its own: 2000 RoIs forward, and 128 forward + backward."""
        feature_map = np.array(model.net.blobs[model.features].data, copy=True)
        _, channels, height, width = feature_map.shape
        layer = model.net.layers[model.roi_index].param
        pooling = text_format.MessageToString(layer.roi_pooling_param, as_one_line=True)
        text = (f'name: "roi" force_backward: true input: "features" input_shape {{ dim: 1 dim: {channels} '
                f'dim: {height} dim: {width} }} input: "rois" input_shape {{ dim: 1 dim: 5 }} '
                f'layer {{ name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled" '
                f'roi_pooling_param {{ {pooling} }} }}')
        net = Net(protoio.net_from_string(text), "TRAIN")
        rng = np.random.default_rng(5)
        for kind, count, train in (("roi", self.sizes.rois, False), ("roi-train", self.sizes.train_rois, True)):
            rois = model.rois[:count]
            compares = roi_compares(rois, model.pooled, model.spatial_scale, channels, height, width)
            row = Row(kind, model.name, f"{count} RoIs on {channels}x{height}x{width}",
                      compares, unit="Gop/s")
            diff = rng.standard_normal((count, channels) + model.pooled).astype(np.float32)

            def ours():
                out = net.forward(features=feature_map, rois=rois)["pooled"]
                if train:
                    return out, net.backward(pooled=diff)["features"]
                return out, None
            reference = [np.array(a, copy=True) if a is not None else None for a in ours()]
            row.add("fastrcnn", self.time(ours))
            if self.torch:
                torch = self.torch
                features = torch.from_numpy(feature_map)

                def run():
                    x = features.detach().requires_grad_(train)
                    out = torch_roi_pool(torch, x, rois, model.pooled, model.spatial_scale)
                    if train:
                        out.backward(torch.from_numpy(diff))
                        return out.detach(), x.grad
                    return out, None
                with torch.inference_mode(not train):
                    out, grad = run()
                    check = relative_error(out.numpy(), reference[0])
                    if train:
                        check = max(check, relative_error(grad.numpy(), reference[1]))
                    row.add("torch", self.time(run), check)
            row.note("rate: one max per pooled input element (backward not counted)")
            self.record(row)

    def head(self, model, twin):
        net = model.net
        pooled = np.array(net.blobs[model.pooled_blob].data, copy=True)
        row = Row("head", model.name, f"{len(pooled)} RoIs", conv_flops(net, model.roi_index + 1))
        outputs = ("cls_prob", "bbox_pred")

        def ours():
            return net.forward(start=model.head_start)
        net.blobs[model.pooled_blob].data[...] = pooled
        reference = {k: np.array(v, copy=True) for k, v in ours().items()}
        row.add("fastrcnn", self.time(ours))
        if twin:
            tensor = self.torch.from_numpy(pooled)
            with self.torch.inference_mode():
                run = lambda: twin.forward({model.pooled_blob: tensor}, start=model.head_start)  # noqa: E731
                out = run()
                check = max(relative_error(out[k].numpy(), reference[k]) for k in outputs)
                row.add("torch", self.time(run), check)
        self.record(row)

    def detect(self, model, twin, weights, svd=None):
        net = svd or model.net
        def ours():
            return im_detect(net, model.image, model.boxes, model.cfg)
        reference = ours()
        row = Row("detect-svd" if svd is not None else "detect", model.name,
                  f"{model.height}x{model.width}, {len(model.boxes)} proposals", conv_flops(net))
        row.add("fastrcnn", self.time(ours))
        if twin:
            torch = self.torch

            def forward(data, rois):
                out = twin.forward({"data": data, "rois": rois})
                return {k: out[k].numpy() for k in ("cls_prob", "bbox_pred")}
            adapter = NetAdapter(f"{model.name} (PyTorch)", forward)
            with torch.inference_mode():
                run = lambda: im_detect(adapter, model.image, model.boxes, model.cfg)  # noqa: E731
                check = max(map(relative_error, run(), reference))
                row.add("torch", self.time(run), check)
        if weights:
            self.detect_opencv(model, weights, row, reference)
        self.record(row)

    def onnx(self, model):
        """The export row and the ort-detect row (ratio: native im_detect time / onnxruntime's)."""
        try:
            import onnxruntime  # noqa: F401
            from fastrcnn.onnx_export import OnnxNet, build_model
        except ImportError:
            self.notes.append("onnx or onnxruntime is missing (pip install '.[onnx]'): the ONNX rows are skipped")
            return
        path = self.workdir / f"{model.name}.onnx"
        row = Row("export", model.name, "build, check, serialise", 0)
        row.add("fastrcnn", time_runs(lambda: path.write_bytes(build_model(model.net).SerializeToString()), 1,
                                      warmup=False))
        self.record(row)
        exported = OnnxNet(path, threads=self.args.threads)
        row = Row("ort-detect", model.name, f"{model.height}x{model.width}, {len(model.boxes)} proposals",
                  conv_flops(model.net))
        reference = im_detect(model.net, model.image, model.boxes, model.cfg)
        row.add("fastrcnn", self.time(lambda: im_detect(model.net, model.image, model.boxes, model.cfg)))
        run = lambda: im_detect(exported, model.image, model.boxes, model.cfg)  # noqa: E731
        row.add("onnxruntime", self.time(run), max(map(relative_error, run(), reference)))
        self.record(row)

    def detect_opencv(self, model, weights, row, reference):
        path, net_param = opencv_prototxt(model.name, self.workdir)
        cv_net = opencv_net(self.cv2, path, weights)
        outputs = [last_writer(net_param, b) for b in ("cls_prob", "bbox_pred")]

        def forward(data, rois):
            cv_net.setInput(data, "data")
            cv_net.setInput(rois, "rois")
            return dict(zip(("cls_prob", "bbox_pred"), cv_net.forward(outputs)))
        adapter = NetAdapter(f"{model.name} (OpenCV)", forward)
        # one untimed call with a few RoIs sets its layers up; the 2000-RoI detection itself runs once
        im_detect(adapter, model.image, model.boxes[:8], model.cfg)
        result = []
        times = time_runs(lambda: result.append(im_detect(adapter, model.image, model.boxes, model.cfg)), 1,
                          warmup=False)
        check = None
        if model.name == "M":
            row.note("OpenCV runs M's LRN with k = 1 (its importer ignores k): checked against our net with k = 1")
            k1 = Net(str(path), "TEST")
            copy_params(model.net, k1)
            reference = im_detect(k1, model.image, model.boxes, model.cfg)
            del k1
        check = max(map(relative_error, result[0], reference))
        row.add("opencv", times, check)
        row.note("OpenCV: 1 timed run (slow with many RoIs), after a warm-up with 8 RoIs")

    def train(self, name):
        net, net_param, inputs = train_net(name, self.sizes)
        he_fill(net, 0)
        net.forward(**inputs)
        h, w = inputs["data"].shape[2:]
        row = Row("train", name, f"2x{h}x{w}, {self.sizes.train_rois} RoIs", train_flops(net))

        def ours():
            net.clear_param_diffs()
            net.forward(**inputs)
            net.backward()
        row.add("fastrcnn", self.time(ours))
        if self.torch:
            twin, run = train_step(self.torch, net, net_param, inputs)
            check = check_train(name, self.sizes, net, inputs, twin, run)
            row.add("torch", self.time(run), check)
            row.note("checked with dropout off: the loss, and every parameter gradient norm-wise")
        row.note("one iteration: forward + backward, no parameter update")
        self.record(row)

    # -- memory --
    def memory(self, name):
        height, width = self.sizes.memory_image
        row = {"row": "memory", "model": name, "workload": f"detection {height}x{width}, {self.sizes.rois} "
               "proposals", "peak_rss_mib": {}, "baseline_rss_mib": {}, "notes": [
                   "VmHWM of a fresh spawned process running one detection, its peak reset after set-up "
                   "(the weights stay resident and count); baseline: the process before building the model"]}
        impls = ["fastrcnn"] + (["torch"] if self.torch else []) + (["opencv"] if self.cv2 else [])
        weights = path = None
        if self.cv2:
            model = Net(str(prototxt(name)), "TEST")
            he_fill(model, 0)
            weights = self.workdir / f"{name}_memory.caffemodel"
            save_weights(model, str(weights))
            path, _ = opencv_prototxt(name, self.workdir)
            del model
            gc.collect()
        for impl in impls:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                peak, baseline = pool.submit(memory_child, impl, name, self.sizes.quick, self.args.threads,
                                             str(path) if path else None,
                                             str(weights) if weights else None).result()
            row["peak_rss_mib"][impl] = peak
            row["baseline_rss_mib"][impl] = baseline
        self.rows.append(row)
        self.log(format_memory(row))
        self.ctx.recorded(row)


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(impl, name, quick, threads, opencv_path, weights):
    """Run one detection with one implementation; (peak RSS, baseline RSS) in MiB of this process."""
    set_threads(threads, {"torch": ("torch",), "opencv": ("cv2",)}.get(impl, ()))
    baseline = _status_kib("VmRSS") / 1024
    sizes = Sizes(quick)
    sizes.image = sizes.memory_image
    model = None
    if impl == "opencv":
        cv2 = optional_cv2()
        rng = np.random.default_rng(1)
        height, width = sizes.memory_image
        image, boxes = random_image(rng, height, width), random_boxes(rng, sizes.rois, height, width)
        cfg = detect_config(height, width)
        net_param = protoio.load_net(opencv_path)
        cv_net = opencv_net(cv2, opencv_path, weights)
        outputs = [last_writer(net_param, b) for b in ("cls_prob", "bbox_pred")]

        def forward(data, rois):
            cv_net.setInput(data, "data")
            cv_net.setInput(rois, "rois")
            return dict(zip(("cls_prob", "bbox_pred"), cv_net.forward(outputs)))
        run = lambda: im_detect(NetAdapter("opencv", forward), image, boxes, cfg)  # noqa: E731
    else:
        model = Model(name, sizes)
        image, boxes, cfg = model.image, model.boxes, model.cfg
        if impl == "torch":
            torch = optional_torch()
            twin = TorchTwin(torch, model.net)
            model = None
            gc.collect()

            def forward(data, rois):
                with torch.inference_mode():
                    out = twin.forward({"data": data, "rois": rois})
                    return {k: out[k].numpy() for k in ("cls_prob", "bbox_pred")}
            run = lambda: im_detect(NetAdapter("torch", forward), image, boxes, cfg)  # noqa: E731
        else:
            run = lambda: im_detect(model.net, image, boxes, cfg)  # noqa: E731
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    run()
    return _status_kib("VmHWM") / 1024, baseline


