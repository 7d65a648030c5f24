"""The configuration scheme: the original's defaults, type checks, and the precedence
defaults < roi_data_param < --cfg YAML < --set."""
import copy
import json
import pickle

import numpy as np
import pytest

from fastrcnn.errors import Error
from fastrcnn.rcnn.config import (Config, apply_roi_data_param, default_config, format_config, merge_pairs,
                                  merge_yaml_file, resolve_data_root)


class FakeRoIDataParam:
    """Duck-typed RoIDataParameter: proto2 semantics (HasField for singular fields, a list for scales)."""

    def __init__(self, scales=(), **fields):
        self.scales = list(scales)
        self._fields = fields

    def HasField(self, name):  # noqa: N802  (protobuf's spelling)
        return name in self._fields

    def __getattr__(self, name):
        fields = self.__dict__["_fields"]
        if name in fields:
            return fields[name]
        raise AttributeError(name)


def write(tmp_path, text, name="exp.yml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_match_the_original():
    cfg = default_config()
    train, test = cfg.TRAIN, cfg.TEST
    assert train.SCALES == (600,) and train.MAX_SIZE == 1000
    assert (train.IMS_PER_BATCH, train.BATCH_SIZE, train.FG_FRACTION) == (2, 128, 0.25)
    assert (train.FG_THRESH, train.BG_THRESH_HI, train.BG_THRESH_LO) == (0.5, 0.5, 0.1)
    assert train.USE_FLIPPED is True and train.BBOX_REG is True and train.BBOX_THRESH == 0.5
    assert train.SNAPSHOT_ITERS == 10000 and train.SNAPSHOT_INFIX == "" and train.USE_PREFETCH is True
    assert test.SCALES == (600,) and test.MAX_SIZE == 1000 and test.NMS == 0.3
    assert test.SVM is False and test.BBOX_REG is True and test.PROTOCOL == "original"
    assert test.MAX_PER_IMAGE == 100 and test.DET_THRESH == 0.05
    assert cfg.DEDUP_BOXES == 1.0 / 16.0 and cfg.RNG_SEED == 3 and cfg.EPS == 1e-14
    assert cfg.EXP_DIR == "default" and cfg.DATA_ROOT == ""
    assert cfg.PROPOSALS == "selective_search" and cfg.PROPOSALS_TOP_K == 2000
    means = np.asarray(cfg.PIXEL_MEANS)
    assert means.shape == (1, 1, 3)
    np.testing.assert_array_equal(means.ravel(), [102.9801, 115.9465, 122.7717])


def test_default_configs_are_independent_and_copies_are_deep():
    a, b = default_config(), default_config()
    a.TRAIN.SCALES = (500,)
    assert b.TRAIN.SCALES == (600,)
    for clone in (a.copy(), copy.copy(a), copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert clone == a
        clone.TRAIN.MAX_SIZE = 7
        assert a.TRAIN.MAX_SIZE == 1000
    section = pickle.loads(pickle.dumps(a.TRAIN))
    assert section.SCALES == (500,) and section == a.TRAIN


def test_precedence_defaults_param_yaml_set(tmp_path):
    cfg = default_config()
    param = FakeRoIDataParam(scales=[500], max_size=900, batch_size=64, fg_fraction=float(np.float32(0.3)),
                             use_flipped=False, rng_seed=7, num_classes=5, imdb="toy_train")
    apply_roi_data_param(cfg, param)
    assert cfg.TRAIN.SCALES == (500,) and cfg.TRAIN.MAX_SIZE == 900 and cfg.TRAIN.BATCH_SIZE == 64
    assert cfg.TRAIN.FG_FRACTION == 0.3  # float32 0.3 is taken at its shortest decimal
    assert cfg.TRAIN.USE_FLIPPED is False and cfg.RNG_SEED == 7
    assert cfg.TRAIN.IMS_PER_BATCH == 2 and cfg.TRAIN.BG_THRESH_LO == 0.1  # fields not set stay

    merge_yaml_file(cfg, write(tmp_path, "TRAIN:\n  SCALES: !!python/tuple [400, 450]\n  MAX_SIZE: 800\n"))
    assert cfg.TRAIN.SCALES == (400, 450) and cfg.TRAIN.MAX_SIZE == 800 and cfg.TRAIN.BATCH_SIZE == 64

    merge_pairs(cfg, ["TRAIN.SCALES", "(300,)", "TEST.NMS", "0.4", "EXP_DIR", "multiscale"])
    assert cfg.TRAIN.SCALES == (300,) and cfg.TEST.NMS == 0.4 and cfg.EXP_DIR == "multiscale"
    assert cfg.TRAIN.MAX_SIZE == 800 and cfg.TRAIN.BATCH_SIZE == 64 and cfg.TRAIN.FG_FRACTION == 0.3


def test_unset_param_changes_nothing():
    cfg = apply_roi_data_param(default_config(), FakeRoIDataParam())
    assert cfg == default_config()


def test_real_roi_data_parameter_message():
    caffe_pb2 = pytest.importorskip("fastrcnn.proto.caffe_pb2")
    if not hasattr(caffe_pb2, "RoIDataParameter"):
        pytest.skip("the schema has no RoIDataParameter")
    param = caffe_pb2.RoIDataParameter(scales=[480, 576], bg_thresh_lo=0.1, bbox_reg=False)
    cfg = apply_roi_data_param(default_config(), param)
    assert cfg.TRAIN.SCALES == (480, 576) and cfg.TRAIN.BG_THRESH_LO == 0.1 and cfg.TRAIN.BBOX_REG is False
    assert cfg.TRAIN.MAX_SIZE == 1000 and cfg.TRAIN.USE_FLIPPED is True


def test_param_with_a_bad_value_names_the_field():
    with pytest.raises(Error, match=r"train\.prototxt data\.fg_fraction.*TRAIN\.FG_FRACTION.*1\.5"):
        apply_roi_data_param(default_config(), FakeRoIDataParam(fg_fraction=1.5), source="train.prototxt data")


def test_python_tuple_yaml_as_the_original_cfg_files(tmp_path):
    path = write(tmp_path, "EXP_DIR: multiscale\n"
                           "TRAIN:\n  SCALES: !!python/tuple [480, 576, 688, 864, 1200]\n  MAX_SIZE: 2000\n"
                           "TEST:\n  SCALES: !!python/tuple [480, 576, 688, 864, 1200]\n  MAX_SIZE: 2000\n")
    cfg = merge_yaml_file(default_config(), path)
    assert cfg.TRAIN.SCALES == cfg.TEST.SCALES == (480, 576, 688, 864, 1200)
    assert cfg.TRAIN.MAX_SIZE == cfg.TEST.MAX_SIZE == 2000 and cfg.EXP_DIR == "multiscale"
    assert cfg.TRAIN.BBOX_REG is True  # nested sections merge key by key


def test_yaml_lists_and_scalars_become_tuples(tmp_path):
    cfg = merge_yaml_file(default_config(), write(tmp_path, "TRAIN:\n  SCALES: [500, 600]\nTEST:\n  SCALES: 500\n"))
    assert cfg.TRAIN.SCALES == (500, 600) and cfg.TEST.SCALES == (500,)


def test_empty_yaml_is_a_no_op(tmp_path):
    assert merge_yaml_file(default_config(), write(tmp_path, "")) == default_config()


def test_unsafe_yaml_tags_are_refused(tmp_path):
    path = write(tmp_path, "EXP_DIR: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(Error, match="exp.yml"):
        merge_yaml_file(default_config(), path)


def test_unknown_yaml_key_names_file_key_and_value(tmp_path):
    path = write(tmp_path, "TRAIN:\n  SCALE: !!python/tuple [400]\n")
    with pytest.raises(Error, match=r"exp\.yml: unknown config key TRAIN\.SCALE \(value \(400,\)\).*TRAIN\.SCALES"):
        merge_yaml_file(default_config(), path)


def test_wrong_yaml_type_names_file_key_and_value(tmp_path):
    with pytest.raises(Error, match=r"exp\.yml: config key TEST\.NMS must be a number.*'high'"):
        merge_yaml_file(default_config(), write(tmp_path, "TEST:\n  NMS: high\n"))
    with pytest.raises(Error, match=r"exp\.yml: config section TRAIN must be a mapping"):
        merge_yaml_file(default_config(), write(tmp_path, "TRAIN: 3\n"))


def test_missing_and_malformed_yaml_files(tmp_path):
    with pytest.raises(Error, match="nope.yml"):
        merge_yaml_file(default_config(), tmp_path / "nope.yml")
    with pytest.raises(Error, match="exp.yml is not valid YAML"):
        merge_yaml_file(default_config(), write(tmp_path, "TRAIN: [1,\n"))


@pytest.mark.parametrize("pairs, pattern", [
    (["TRAIN.BATCH_SIZE", "True"], r"--set TRAIN\.BATCH_SIZE True: config key TRAIN\.BATCH_SIZE must be an int"),
    (["TRAIN.BATCH_SIZE", "64.0"], r"TRAIN\.BATCH_SIZE must be an int.*64\.0"),
    (["TRAIN.USE_FLIPPED", "1"], r"TRAIN\.USE_FLIPPED must be True or False, got 1"),
    (["TEST.PROTOCOL", "faster"], r"TEST\.PROTOCOL must be one of 'original', 'py-faster-rcnn', got 'faster'"),
    (["TEST.SCALES", "()"], r"TEST\.SCALES must be a positive number"),
    (["TEST.NMSS", "0.3"], r"--set TEST\.NMSS 0\.3: unknown config key TEST\.NMSS \(value 0\.3\)"),
    (["SOLVER.LR", "0.1"], r"unknown config section SOLVER"),
    (["TRAIN", "1"], r"config section TRAIN must be a mapping"),
    (["TRAIN.SCALES"], r"odd number"),
])
def test_set_errors_name_key_value_and_source(pairs, pattern):
    with pytest.raises(Error, match=pattern):
        merge_pairs(default_config(), pairs)


def test_set_parses_literals_and_falls_back_to_strings():
    cfg = merge_pairs(default_config(), ["TEST.NMS", "0", "TEST.PROTOCOL", "py-faster-rcnn",
                                         "TRAIN.SCALES", "[480, 576]", "PIXEL_MEANS", "[100, 110, 120]",
                                         "TRAIN.SNAPSHOT_INFIX", "'7'"])
    assert cfg.TEST.NMS == 0.0 and isinstance(cfg.TEST.NMS, float)  # an int is fine for a float key
    assert cfg.TEST.PROTOCOL == "py-faster-rcnn" and cfg.TRAIN.SCALES == (480, 576)
    assert cfg.PIXEL_MEANS == (((100.0, 110.0, 120.0),),) and cfg.TRAIN.SNAPSHOT_INFIX == "7"


def test_assignment_is_checked():
    cfg = default_config()
    cfg.TRAIN.SCALES = 480
    assert cfg.TRAIN.SCALES == (480,)
    with pytest.raises(Error, match=r"assignment: config key RNG_SEED must be an int >= 0, got -1"):
        cfg.RNG_SEED = -1
    with pytest.raises(Error, match="unknown config key TEST.SVMS"):
        cfg.TEST.SVMS = True


def test_to_dict_from_dict_round_trip_through_json():
    cfg = merge_pairs(default_config(), ["TRAIN.SCALES", "(480, 576)", "TEST.SVM", "True", "EXP_DIR", "x"])
    text = json.dumps(cfg.to_dict())
    back = Config.from_dict(json.loads(text), source="model.json")
    assert back == cfg and back.TRAIN.SCALES == (480, 576) and back.PIXEL_MEANS == cfg.PIXEL_MEANS


def test_from_dict_tolerates_missing_keys_but_not_unknown_ones():
    old = default_config().to_dict()
    del old["PROPOSALS_TOP_K"], old["TEST"]["PROTOCOL"]
    old["TEST"]["NMS"] = 0.5
    cfg = Config.from_dict(old)
    assert cfg.PROPOSALS_TOP_K == 2000 and cfg.TEST.PROTOCOL == "original" and cfg.TEST.NMS == 0.5
    old["TEST"]["NMX"] = 0.5
    with pytest.raises(Error, match=r"model\.json: unknown config key TEST\.NMX"):
        Config.from_dict(old, source="model.json")
    with pytest.raises(Error, match="must be a mapping"):
        Config.from_dict([1, 2], source="model.json")


def test_format_config_lists_every_key():
    text = format_config(default_config())
    assert "TRAIN:\n  SCALES: (600,)\n" in text and "  PROTOCOL: 'original'" in text
    assert "\nRNG_SEED: 3" in text and "DEDUP_BOXES: 0.0625" in text
    assert len(text.splitlines()) == 2 + 14 + 10 + 8  # two section headers, 14 TRAIN, 10 TEST, 8 top-level keys


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTRCNN_DATA_ROOT", raising=False)
    assert str(resolve_data_root()) == "data"
    monkeypatch.setenv("FASTRCNN_DATA_ROOT", str(tmp_path))
    assert resolve_data_root("") == tmp_path
    assert str(resolve_data_root("elsewhere")) == "elsewhere"
