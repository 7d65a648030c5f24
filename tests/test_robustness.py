"""Broken inputs give fastrcnn.Error, never another exception.

The S/M/L TEST prototxts of prototxt/ (the original's nets, layer for layer) are mutated in many seeded ways
(truncation, unknown types and enum names, dangling or swapped bottoms, zero or negative sizes, groups that do
not divide, broken braces, repeated names, ...); building each net, and running a forward pass on a small input
where it builds, must either work or raise ``fastrcnn.Error`` with a message. Weights files written from a small
net are truncated and have bytes flipped; every load must be an Error or a correct load (for .npz, whose zip
members carry CRCs, a load that succeeds must give back the original arrays).
"""
import re
import zipfile

import numpy
import pytest

import fastrcnn
from fastrcnn import weights
from model_helpers import PROTOTXT, TEST_NETS, msra_fill

IMAGE = numpy.random.default_rng(0).standard_normal((1, 3, 64, 80), dtype=numpy.float32)
ROIS = numpy.array([[0, 0, 0, 79, 63], [0, 8, 8, 40, 40]], dtype=numpy.float32)


def shrink(text):
    """The same net with every layer of 96 or more outputs 16 times narrower and a 64×64 input shape:
    cheap to build and run, whatever a mutation feeds into the fc layers."""
    text = re.sub(r"num_output: (\d+)",
                  lambda m: f"num_output: {int(m[1]) // 16 if int(m[1]) >= 96 else m[1]}", text)
    return re.sub(r"dim: 22[47]", "dim: 64", text)


def outcome(path):
    """'ok' or 'error' for building the net at ``path`` and running it; other exceptions propagate."""
    try:
        net = fastrcnn.Net(str(path), "TEST")
        inputs = {name: value for name, value in (("data", IMAGE), ("rois", ROIS)) if name in net.inputs}
        net.forward(**inputs)
    except fastrcnn.Error as exc:
        assert str(exc).strip(), "an Error without a message"
        return "error"
    return "ok"


def check_all(tmp_path, mutations):
    """Run every (description, text) mutation; fail listing those that raised anything but Error."""
    path = tmp_path / "mutated.prototxt"
    failures, counts = [], {"ok": 0, "error": 0}
    for what, text in mutations:
        path.write_text(text)
        try:
            counts[outcome(path)] += 1
        except Exception as exc:  # noqa: BLE001 - the point is to catch every non-Error exception
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} of {len(mutations)} mutations raised a non-Error:\n" + "\n".join(failures)
    return counts


@pytest.fixture(params=TEST_NETS)
def base(request):
    """(name, shrunk text, seeded generator) of one S/M/L TEST prototxt."""
    rel = request.param
    text = shrink((PROTOTXT / rel).read_text())
    return rel, text, numpy.random.default_rng(sum(map(ord, rel)))


def test_unmutated_shrunk_nets_run(base, tmp_path):
    _, text, _ = base
    assert check_all(tmp_path, [("unmutated", text)]) == {"ok": 1, "error": 0}


# -- mutation families -------------------------------------------------------------------------------------
def truncations(text, rng):
    cuts = set(numpy.linspace(0, len(text) - 1, 24).astype(int).tolist())
    cuts |= set(rng.integers(0, len(text), 16).tolist())
    # cuts just after a closing brace leave a parseable net missing its last layers
    braces = [m.end() for m in re.finditer(r"\n}", text)]
    cuts |= {braces[i] for i in rng.choice(len(braces), size=min(6, len(braces)), replace=False)}
    return [(f"truncated at {c}", text[:c]) for c in sorted(cuts)]


def replace_nth(text, pattern, n, repl):
    """``text`` with the n-th match of ``pattern`` replaced (``repl`` as in re.sub)."""
    matches = list(re.finditer(pattern, text))
    m = matches[n % len(matches)]
    return text[:m.start()] + m.expand(repl) + text[m.end():]


def each_match(text, pattern, rng, count):
    """Up to ``count`` distinct match indices of ``pattern``, seeded."""
    n = len(re.findall(pattern, text))
    return [] if n == 0 else rng.choice(n, size=min(count, n), replace=False).tolist()


INT_FIELDS = ("kernel_size", "stride", "pad", "num_output", "group", "pooled_w", "pooled_h", "local_size", "dim")
FLOAT_FIELDS = ("spatial_scale", "alpha", "beta", "k", "dropout_ratio")
INT_VALUES = ("0", "-1", "-3", "2", "100", "4.5", "x")
FLOAT_VALUES = ("0", "-1", "-0.0625", "nan", "inf", "-inf", "1e30", "1e-30")


def values(text, rng):
    out = []
    for fields, vals in ((INT_FIELDS, INT_VALUES), (FLOAT_FIELDS, FLOAT_VALUES)):
        for field in fields:
            pattern = rf"\b{field}: [^\s}}]+"
            for n in each_match(text, pattern, rng, 2):
                for value in vals:
                    out.append((f"{field} #{n} = {value}", replace_nth(text, pattern, n, f"{field}: {value}")))
    # a group that does not divide the channels, on convs with and without a group already
    for n in each_match(text, r"num_output: \d+", rng, 3):
        for group in ("5", "7", "0"):
            out.append((f"group {group} after num_output #{n}",
                        replace_nth(text, r"num_output: \d+", n, rf"\g<0> group: {group}")))
    # a size given three times, and one axis alone
    for n in each_match(text, r"kernel_size: \d+", rng, 2):
        out.append((f"kernel_size #{n} thrice", replace_nth(text, r"kernel_size: \d+", n, r"\g<0> \g<0> \g<0>")))
        out.append((f"kernel_h beside kernel_size #{n}",
                    replace_nth(text, r"kernel_size: \d+", n, r"\g<0> kernel_h: 2")))
        out.append((f"kernel_h alone #{n}", replace_nth(text, r"kernel_size: \d+", n, "kernel_h: 3")))
    return out


def structure(text, rng):
    out = []
    names = re.findall(r'\bname: "(\w+)"', text)[1:]  # layer names (the first is the net's)
    blobs = sorted(set(re.findall(r'\b(?:top|bottom): "(\w+)"', text)) | {"data", "rois"})
    for n in each_match(text, r'\btype: "\w+"', rng, 4):
        for bad in ("Bogus", "", "convolution", "Python"):
            out.append((f"type #{n} = {bad!r}", replace_nth(text, r'\btype: "\w+"', n, f'type: "{bad}"')))
    for n in each_match(text, r'\bbottom: "\w+"', rng, 6):
        out.append((f"bottom #{n} dangling", replace_nth(text, r'\bbottom: "\w+"', n, 'bottom: "nowhere"')))
        for blob in rng.choice(blobs, size=3, replace=False):
            out.append((f"bottom #{n} = {blob}", replace_nth(text, r'\bbottom: "\w+"', n, f'bottom: "{blob}"')))
        out.append((f"bottom #{n} removed", replace_nth(text, r'\bbottom: "\w+"', n, "")))
        out.append((f"bottom #{n} doubled", replace_nth(text, r'\bbottom: "\w+"', n, r"\g<0> \g<0>")))
    for n in each_match(text, r'\btop: "\w+"', rng, 5):
        out.append((f"top #{n} removed", replace_nth(text, r'\btop: "\w+"', n, "")))
        out.append((f"top #{n} = data", replace_nth(text, r'\btop: "\w+"', n, 'top: "data"')))
        out.append((f"top #{n} doubled", replace_nth(text, r'\btop: "\w+"', n, r"\g<0> \g<0>")))
    # swap the bottoms of every two-bottom layer (roi_pool5: features and rois)
    two = r'(bottom: "\w+")(\s+)(bottom: "\w+")'
    for n in range(len(re.findall(two, text))):
        out.append((f"bottoms #{n} swapped", replace_nth(text, two, n, r"\3\2\1")))
    for i, j in rng.choice(len(names), size=(6, 2)):
        out.append((f"layer {names[i]} renamed {names[j]}",
                    replace_nth(text, rf'\bname: "{names[i]}"', 0, f'name: "{names[j]}"')))
    for n in each_match(text, r"input_shape \{[^}]*\}", rng, 2):
        out.append((f"input_shape #{n} removed", replace_nth(text, r"input_shape \{[^}]*\}", n, "")))
        out.append((f"input_shape #{n} emptied", replace_nth(text, r"input_shape \{[^}]*\}", n, "input_shape {}")))
    out.append(("input named twice", text.replace('input: "rois"', 'input: "data"', 1)))
    out.append(("param blocks on a ReLU", replace_nth(text, r'type: "ReLU"', 0, r"\g<0> param { lr_mult: 1 }")))
    out.append(("loss_weight twice", replace_nth(text, r'type: "Softmax"', 0, r"\g<0> loss_weight: 1 loss_weight: 1")))
    out.append(("include and exclude", replace_nth(text, r'type: "ReLU"', 0,
                                                   r"\g<0> include { phase: TEST } exclude { phase: TRAIN }")))
    out.append(("propagate_down twice", replace_nth(text, r'type: "Softmax"', 0,
                                                    r"\g<0> propagate_down: true propagate_down: false")))
    return out


def syntax(text, rng):
    out = []
    for what, pattern, repl in (("a '}' removed", r"}", ""), ("a '{' removed", r"{", ""),
                                ("an extra '}'", r"}", "}}"), ("a ':' removed", r":", ""),
                                ("a quote removed", r'"', "")):
        for n in each_match(text, pattern, rng, 3):
            out.append((f"{what} (#{n})", replace_nth(text, pattern, n, repl)))
    for bad in ("MAXX", "7", "-1", "STOCHASTIC", "AVE", '"MAX"'):
        out.append((f"pool: {bad}", text.replace("pool: MAX", f"pool: {bad}", 1)))
    for block, field, value in (("lrn_param", "norm_region", "SIDEWAYS"),
                                ("lrn_param", "norm_region", "WITHIN_CHANNEL"),
                                ("convolution_param", "engine", "CUDNN"), ("pooling_param", "engine", "TURBO"),
                                ("roi_pooling_param", "bogus_field", "1")):
        if block in text:
            out.append((f"{field}: {value} in the first {block}",
                        replace_nth(text, rf"\b{block} \{{", 0, rf"\g<0> {field}: {value}")))
    out.append(("phase: TRIAN rule", replace_nth(text, r'type: "ReLU"', 0, r"\g<0> include { phase: TRIAN }")))
    out.append(("state rule with stage", replace_nth(text, r'type: "ReLU"', 0, r'\g<0> include { stage: "x" }')))
    out.append(("V1 layers block mixed in", text + '\nlayers { name: "old" type: RELU bottom: "cls_score" top: "x" }'))
    out.append(("legacy input_dim beside input_shape", text.replace('input: "data"', 'input: "data" input_dim: 1', 1)))
    printable = list("{}:\"'# \n\tabcxyz019_-.;,[]<>\\")
    for i in rng.integers(len(text), size=12).tolist():
        char = printable[int(rng.integers(len(printable)))]
        out.append((f"character {i} -> {char!r}", text[:i] + char + text[i + 1:]))
    return out


@pytest.mark.parametrize("family", [truncations, values, structure, syntax], ids=lambda f: f.__name__)
def test_mutated_prototxt(base, tmp_path, family):
    _, text, rng = base
    mutations = family(text, rng)
    counts = check_all(tmp_path, mutations)
    assert counts["error"] > 0  # the mutations do break things


def test_non_utf8_and_missing_files(tmp_path):
    good = shrink((PROTOTXT / TEST_NETS[0]).read_text()).encode()
    for i, junk in enumerate((b"\xff\xfe", b"\x80", b"\xc3(")):
        path = tmp_path / f"junk{i}.prototxt"
        path.write_bytes(good[:200] + junk + good[200:])
        assert outcome(path) == "error"
    assert outcome(tmp_path / "absent.prototxt") == "error"
    assert outcome(tmp_path) == "error"  # a directory


# -- forward-time inputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_prototxt(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "test.prototxt"
    path.write_text(shrink((PROTOTXT / "CaffeNet/test.prototxt").read_text()))
    return path


@pytest.fixture(scope="module")
def small_net(small_prototxt):
    net = fastrcnn.Net(str(small_prototxt), "TEST")
    msra_fill(net, seed=3)
    return net


BAD_INPUTS = {
    "rois batch index past the images": dict(rois=numpy.array([[1, 0, 0, 9, 9]], numpy.float32)),
    "rois negative batch index": dict(rois=numpy.array([[-1, 0, 0, 9, 9]], numpy.float32)),
    "rois nan batch index": dict(rois=numpy.array([[numpy.nan, 0, 0, 9, 9]], numpy.float32)),
    "rois of width 4": dict(rois=numpy.zeros((3, 4), numpy.float32)),
    "rois of width 6": dict(rois=numpy.zeros((2, 6), numpy.float32)),
    "rois 1-D": dict(rois=numpy.zeros(5, numpy.float32)),
    "rois as text": dict(rois=numpy.array([["a", "b", "c", "d", "e"]])),
    "data 3-D": dict(data=IMAGE[0]),
    "data with one channel": dict(data=IMAGE[:, :1]),
    "data empty": dict(data=numpy.zeros((0, 3, 64, 80), numpy.float32)),
    "an unknown input": dict(label=numpy.zeros(2, numpy.float32)),
    "a ragged list": dict(rois=[[0, 1, 2], [0, 1]]),
}
ODD_BUT_VALID = {
    "no rois": dict(rois=numpy.zeros((0, 5), numpy.float32)),
    "rois as Caffe's 4-D blob": dict(rois=ROIS.reshape(2, 5, 1, 1)),
    "a 4×4 image (CaffeNet's pads keep every size positive)": dict(data=IMAGE[:, :, :4, :4]),
    "nan coordinates": dict(rois=numpy.array([[0, numpy.nan, 0, 9, numpy.nan]], numpy.float32)),
    "infinite coordinates": dict(rois=numpy.array([[0, -numpy.inf, 0, numpy.inf, 9]], numpy.float32)),
    "huge coordinates": dict(rois=numpy.array([[0, -1e30, 1e30, 3e38, -3e38]], numpy.float32)),
    "float64 inputs": dict(data=IMAGE.astype(numpy.float64), rois=ROIS.astype(numpy.float64)),
    "integer rois": dict(rois=ROIS.astype(numpy.int64)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS) + list(ODD_BUT_VALID))
def test_forward_inputs(small_net, case):
    inputs = {"data": IMAGE, "rois": ROIS, **BAD_INPUTS.get(case, ODD_BUT_VALID.get(case))}
    try:
        out = small_net.forward(**inputs)
    except fastrcnn.Error as exc:
        assert str(exc).strip()
        assert case in BAD_INPUTS, f"{case}: {exc}"
        return
    assert case in ODD_BUT_VALID, f"{case} was accepted"
    assert out["cls_prob"].shape == (len(small_net.blobs["rois"].data), 21)


# -- weights files -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(small_net, tmp_path_factory):
    """The small net's params and its weights written as .caffemodel and .npz (bytes)."""
    folder = tmp_path_factory.mktemp("weights")
    original = {name: [b.data.copy() for b in blobs] for name, blobs in small_net.params.items()}
    files = {}
    for ext in ("caffemodel", "npz"):
        path = folder / f"w.{ext}"
        weights.save_weights(small_net, str(path))
        files[ext] = path.read_bytes()
    return original, files


@pytest.fixture
def target(small_prototxt):
    """A fresh net of the small net's definition to load weights into."""
    return fastrcnn.Net(str(small_prototxt), "TEST")


def load(net, path, original):
    """'error' or the number of param values that differ from ``original`` after loading ``path``."""
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = numpy.nan
    try:
        missing = weights.load_weights(net, str(path))
    except fastrcnn.Error as exc:
        assert str(exc).strip()
        return "error"
    assert isinstance(missing, list)
    return sum(int((b.data != o).sum()) for name, blobs in net.params.items() if name not in missing
               for b, o in zip(blobs, original[name]))


def corruptions(data, rng, header_spans):
    """(description, bytes), lazily: truncations at many offsets, and single-byte flips anywhere and,
    denser, in the headers (where a flip changes structure rather than a value)."""
    yield "empty", b""
    cuts = numpy.linspace(1, len(data) - 1, 40).astype(int).tolist() + rng.integers(1, len(data), 20).tolist()
    for c in sorted(set(cuts)):
        yield f"truncated at {c}", data[:c]
    spots = set(rng.integers(0, len(data), 60).tolist())
    for start, stop in header_spans:
        stop = min(stop, len(data))
        spots |= set(rng.integers(start, stop, min(16, stop - start)).tolist())
    for i in sorted(spots):
        flipped = bytearray(data)
        flipped[i] ^= int(rng.integers(1, 256))
        yield f"byte {i} flipped", bytes(flipped)
    yield "doubled", data + data
    yield "trailing junk", data + b"\x00junk"


def npz_header_spans(data, tmp_path):
    """Byte spans of each member's local header and .npy header, and the central directory."""
    path = tmp_path / "spans.npz"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    spans = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 140) for i in infos]
    central = max(i.header_offset + 30 + len(i.filename) + i.compress_size for i in infos)
    return spans + [(central + k, central + k + 100) for k in range(0, len(data) - central, 100)]


@pytest.mark.parametrize("ext", ["caffemodel", "npz"])
def test_corrupted_weights(target, saved, tmp_path, ext):
    original, files = saved
    data = files[ext]
    rng = numpy.random.default_rng(11 if ext == "npz" else 12)
    spans = npz_header_spans(data, tmp_path) if ext == "npz" else [(0, 100), (100, 200), (200, 300)]
    path = tmp_path / f"corrupt.{ext}"
    path.write_bytes(data)
    assert load(target, path, original) == 0
    failures, results = [], {}
    for what, corrupt in corruptions(data, rng, spans):
        path.write_bytes(corrupt)
        try:
            results[what] = load(target, path, original)
        except Exception as exc:  # noqa: BLE001 - the point is to catch every non-Error exception
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} corrupted files raised a non-Error:\n" + "\n".join(failures)
    assert "error" in results.values()
    if ext == "npz":
        # every member is CRC-checked: a load that succeeds gives back exactly the saved arrays
        wrong = {what: r for what, r in results.items() if r not in ("error", 0)}
        assert not wrong, f"corrupted .npz files loaded with wrong values: {wrong}"
    else:
        # no checksum in a .caffemodel: a flipped byte may change one float, never more
        wrong = {what: r for what, r in results.items() if r != "error" and r > 1}
        assert not wrong, f"corrupted .caffemodel files loaded with many wrong values: {wrong}"


def test_npz_with_a_damaged_array_header_is_an_error(target, saved, tmp_path):
    """'<f4' -> '<f2' makes numpy read half of the member, short of the end where zip checks the CRC."""
    original, files = saved
    data = files["npz"]
    path = tmp_path / "damaged.npz"
    path.write_bytes(data.replace(b"'descr': '<f4'", b"'descr': '<f2'", 1))
    assert load(target, path, original) == "error"


def npy_member(header):
    """A version 1.0 .npy file with this header text and 16 bytes of data."""
    text = header.encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + bytes(16)


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }",  # terabytes: not a MemoryError
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,, }",               # unbalanced: not a TokenError
    "{'descr': 'O', 'fortran_order': False, 'shape': (2,), }",                # objects: never unpickled
])
def test_crafted_npz_headers_are_errors(tmp_path, header):
    """Well-formed zips (right CRCs) whose .npy headers lie."""
    path = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("conv1/0.npy", npy_member(header))
    with pytest.raises(fastrcnn.Error, match="crafted.npz"):
        weights.read_weights(str(path))
