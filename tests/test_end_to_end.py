"""The real end-to-end runs (slow): the README's main command on the built-in data, retargeting the same recipe
to a second generated dataset, truncated-SVD compression of the trained detector, and the demo."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(args, env):
    """Run a console command of the package (as `python -m`), returning its stdout; fail with its output."""
    done = subprocess.run([sys.executable, "-m"] + args, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def mean_ap(stdout):
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mAP: \d\.\d{4}", last), last
    return float(last.split()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return dict(os.environ, FASTRCNN_DATA_ROOT=str(root), PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def toy_model(env, tmp_path_factory):
    """The README's main command: train on the built-in data (generated on first use) and evaluate."""
    out = tmp_path_factory.mktemp("toy")
    weights = run(["fastrcnn.cli.solve", "prototxt/toy/solver.prototxt", "--output", str(out / "train"),
                   "--quiet"], env).strip().splitlines()[-1]
    stdout = run(["fastrcnn.cli.test", "prototxt/toy/test.prototxt", weights, "--output", str(out / "test"),
                  "--quiet"], env)
    return weights, stdout, out


def test_main_command_reaches_the_map_bar(toy_model):
    _, stdout, _ = toy_model
    print(stdout)
    assert mean_ap(stdout) >= 0.90


def test_compression_at_a_quarter_rank_loses_at_most_one_point(toy_model, env):
    weights, stdout, out = toy_model
    from fastrcnn.weights import read_weights
    layers, _ = read_weights(weights)
    ranks = {name: min(layers[name][0].shape) // 4 for name in ("fc6", "fc7")}
    spec = ",".join(f"{name}:{rank}" for name, rank in ranks.items())
    lines = run(["fastrcnn.cli.compress", "prototxt/toy/test.prototxt", weights, "--layers", spec, "--output",
                 str(out / "svd")], env).strip().splitlines()
    prototxt, small = lines[-2].split(": ", 1)[1], lines[-1]
    compressed = run(["fastrcnn.cli.test", prototxt, small, "--output", str(out / "svd_test"), "--quiet"], env)
    print(spec, compressed)
    loss = mean_ap(stdout) - mean_ap(compressed)
    assert loss <= 0.01, f"compression at {spec} lost {loss:.4f} mAP"


def test_demo_draws_the_boxes_it_reports(toy_model, env, tmp_path):
    weights, _, _ = toy_model
    images = sorted((Path(env["FASTRCNN_DATA_ROOT"]) / "toy" / "JPEGImages").glob("test_*.jpg"))[:3]
    stdout = run(["fastrcnn.cli.demo", *map(str, images), "--net", "prototxt/toy/test.prototxt", "--weights",
                  weights, "--thresh", "0.8", "--output", str(tmp_path)], env)
    found = 0
    for image in images:
        original = cv2.imread(str(image)).astype(np.int16)
        drawn = cv2.imread(str(tmp_path / f"{image.stem}_detections.png")).astype(np.int16)
        for match in re.finditer(rf"{image.name}: \S+ [\d.]+ \((\d+), (\d+), (\d+), (\d+)\)", stdout):
            x1, y1, x2, y2 = map(int, match.groups())
            edge = (slice(y1, y2 + 1), slice(x1, min(x1 + 2, x2) + 1))  # the box's left side is drawn
            assert np.abs(drawn[edge] - original[edge]).max() > 30, (image, match.group(0))
            found += 1
    assert found >= len(images)  # every test image holds at least one confidently detected object


def test_the_recipe_retargets_to_another_dataset(env, tmp_path):
    """Only the class counts and the dataset name are edited: 4 other shapes (toy2), 5 outputs."""
    for name in ("train", "test", "solver"):
        text = (REPO / "prototxt" / "toy" / f"{name}.prototxt").read_text()
        text = text.replace("num_classes: 6", "num_classes: 5").replace('imdb: "toy_train"', 'imdb: "toy2_train"')
        text = re.sub(r'(name: "cls_score"[\s\S]*?num_output: )6', r"\g<1>5", text)
        text = re.sub(r'(name: "bbox_pred"[\s\S]*?num_output: )24', r"\g<1>20", text)
        (tmp_path / f"{name}.prototxt").write_text(text)
    weights = run(["fastrcnn.cli.solve", str(tmp_path / "solver.prototxt"), "--output", str(tmp_path / "out"),
                   "--quiet"], env).strip().splitlines()[-1]
    stdout = run(["fastrcnn.cli.test", str(tmp_path / "test.prototxt"), weights, "--output",
                  str(tmp_path / "test"), "--quiet"], env)
    print(stdout)
    assert mean_ap(stdout) >= 0.80
