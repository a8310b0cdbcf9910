"""data_pipelines.manual: manual-dir checks, restricted pickles, json/yaml, images, corrupt policy."""
import json
import os
import pickle

import numpy as np
import pytest

from data_pipelines import manual
from hand_dataset_fixtures import corrupt_file, jpeg_bytes, png_bytes, py2_pickle_dump


# ----------------------------------------------------------------------------- manual dir
def test_check_manual_dir_lists_every_missing_entry(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "rgb").mkdir()
    (tmp_path / "rgb" / "0001.jpg").write_bytes(b"x")
    required = ["a.json", "b.json", "rgb/", "mask/", ("rgb/0000.png", "rgb/0000.jpg"), ("rgb/0001.png", "rgb/0001.jpg")]
    with pytest.raises(manual.ManualDirError) as err:
        manual.check_manual_dir(tmp_path, required, dataset="demo", instructions="GET IT FROM example.org")
    assert err.value.missing == ["b.json", "mask/", "rgb/0000.png | rgb/0000.jpg"]
    text = str(err.value)
    assert "3 required" in text and "b.json" in text and "mask/" in text and "rgb/0000.png | rgb/0000.jpg" in text
    assert "GET IT FROM example.org" in text and "a.json\n" not in text
    # a file where a folder is expected (and vice versa) counts as missing
    assert manual.missing_paths(tmp_path, ["a.json/", "rgb"]) == ["a.json/", "rgb"]
    assert manual.check_manual_dir(tmp_path, ["a.json", "rgb/"], dataset="demo", instructions="") == tmp_path


def test_check_manual_dir_missing_root(tmp_path):
    with pytest.raises(manual.ManualDirError, match="does not exist"):
        manual.check_manual_dir(tmp_path / "nope", ["a"], dataset="demo", instructions="HOWTO")
    with pytest.raises(manual.ManualDirError, match="no manual directory"):
        manual.check_manual_dir("", ["a"], dataset="demo", instructions="HOWTO")


# ----------------------------------------------------------------------------- pickles
def test_restricted_pickle_reads_python2_numpy_pickles(tmp_path):
    meta = {"handPose": np.linspace(-1, 1, 48), "camMat": np.eye(3, dtype=np.float32) * 2,
            "objName": "019_pitcher_base", "objLabel": 3, "handJoints3D": None, "ids": {1, 2},
            "scalar": np.float64(0.25), "nested": [np.arange(3, dtype=np.int64)]}
    path = tmp_path / "0000.pkl"
    py2_pickle_dump(meta, path)
    raw = path.read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw  # Python-2 layout
    out = manual.load_pickle_restricted(path)
    assert set(out) == set(meta)
    np.testing.assert_array_equal(out["handPose"], meta["handPose"])
    assert out["camMat"].dtype == np.float32 and out["camMat"][0, 0] == 2
    assert out["objName"] == "019_pitcher_base" and out["handJoints3D"] is None and out["ids"] == {1, 2}
    assert out["scalar"] == 0.25 and out["nested"][0].dtype == np.int64


def test_restricted_pickle_reads_python3_protocols(tmp_path):
    for proto in (3, 4, 5):
        path = tmp_path / f"p{proto}.pkl"
        with open(path, "wb") as fh:
            pickle.dump({"a": np.arange(4.0).reshape(2, 2), "s": frozenset({1})}, fh, protocol=proto)
        out = manual.load_pickle_restricted(path)
        np.testing.assert_array_equal(out["a"], np.arange(4.0).reshape(2, 2))
        assert out["s"] == frozenset({1})


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Custom:
    pass


@pytest.mark.parametrize("obj,global_name", [(_Evil(), "system"), (_Custom(), "_Custom"),
                                            ({"f": np.float64}, "float64")])
def test_restricted_pickle_refuses_other_globals(tmp_path, obj, global_name):
    path = tmp_path / "bad.pkl"
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    with pytest.raises(manual.RestrictedPickleError) as err:
        manual.load_pickle_restricted(path)
    assert global_name in str(err.value) and str(path) in str(err.value)


def test_truncated_pickle_is_corrupt(tmp_path):
    path = tmp_path / "t.pkl"
    py2_pickle_dump({"a": np.arange(100.0)}, path)
    corrupt_file(path)
    with pytest.raises(manual.CorruptFileError, match="t.pkl"):
        manual.load_pickle_restricted(path)


# ----------------------------------------------------------------------------- json / yaml / arrays
def test_json_yaml_and_as_array(tmp_path):
    (tmp_path / "ok.json").write_text(json.dumps({"K": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    (tmp_path / "bad.json").write_text('{"K": [1, 2')
    (tmp_path / "ok.yml").write_text("betas: [0.1, 0.2]\nname: subject-01\n")
    (tmp_path / "bad.yml").write_text("a: !!python/object/apply:os.system ['echo x']\n")
    assert manual.load_json(tmp_path / "ok.json")["K"][1][1] == 1
    assert manual.load_yaml(tmp_path / "ok.yml") == {"betas": [0.1, 0.2], "name": "subject-01"}
    with pytest.raises(manual.CorruptFileError, match="bad.json"):
        manual.load_json(tmp_path / "bad.json")
    with pytest.raises(manual.CorruptFileError, match="bad.yml"):  # safe loader: no Python objects
        manual.load_yaml(tmp_path / "bad.yml")
    arr = manual.as_array([[1, 2, 3]], (-1, 3), path="f.json", key="xyz")
    assert arr.shape == (1, 3) and arr.dtype == np.float32
    with pytest.raises(manual.CorruptFileError, match=r"f.json: key 'xyz' has shape \(2,\), expected \(21, 3\)"):
        manual.as_array([1, 2], (21, 3), path="f.json", key="xyz")
    with pytest.raises(manual.CorruptFileError, match="non-finite"):
        manual.as_array([1.0, float("nan")], (2,), path="f.json", key="s")


# ----------------------------------------------------------------------------- images
def test_images_keep_original_jpeg_bytes_and_detect_corruption(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    jpg, png = jpeg_bytes(img), png_bytes(img)
    (tmp_path / "a.jpg").write_bytes(jpg)
    (tmp_path / "a.png").write_bytes(png)
    info = manual.read_image(tmp_path / "a.jpg")
    assert info.format == "jpeg" and info.shape == (6, 10, 3) and info.data == jpg
    assert manual.image_bytes(tmp_path / "a.jpg", "jpeg") == jpg  # no re-encoding
    assert manual.image_bytes(tmp_path / "a.png", "png") == png
    as_png = manual.image_bytes(tmp_path / "a.jpg", "png")
    np.testing.assert_array_equal(manual.decode_image(as_png), manual.decode_image(jpg))
    np.testing.assert_array_equal(manual.decode_image(manual.encode_png(img)), img)
    corrupt_file(tmp_path / "a.jpg")
    with pytest.raises(manual.CorruptFileError, match="a.jpg"):
        manual.read_image(tmp_path / "a.jpg")
    (tmp_path / "n.jpg").write_bytes(b"not an image at all")
    with pytest.raises(manual.CorruptFileError, match="n.jpg"):
        manual.read_image(tmp_path / "n.jpg")


# ----------------------------------------------------------------------------- policy / keys
def test_corrupt_policy_raise_or_count(tmp_path):
    err = manual.CorruptFileError("x/0001.jpg", "cannot decode image")
    with pytest.raises(manual.CorruptFileError, match="x/0001.jpg"):
        manual.CorruptPolicy(skip=False).handle(err)
    policy = manual.CorruptPolicy(skip=True, dataset="demo")
    policy.handle(err)
    policy.handle(manual.CorruptFileError("x/meta.pkl", "cannot unpickle"))
    assert policy.count == 2
    report = policy.report()
    assert "skipped 2" in report and "x/0001.jpg: cannot decode image" in report and "x/meta.pkl" in report
    policy.write_report(tmp_path / "r.json")
    assert [e["path"] for e in json.loads((tmp_path / "r.json").read_text())["skipped"]] == ["x/0001.jpg",
                                                                                              "x/meta.pkl"]
    with pytest.raises(TypeError):
        policy.handle(ValueError("other"))


def test_record_key_preserves_order_within_tfds_key_space():
    keys = [manual.record_key(i, 7) for i in range(7)]
    assert keys == sorted(keys) and len(set(keys)) == 7 and keys[-1] < 2 ** 128
    with pytest.raises(ValueError):
        manual.record_key(7, 7)


# ----------------------------------------------------------------------------- shared build command pieces
MANUAL_DATASETS = [  # (package, default config, its download instructions from the package / its layout module)
    ("coco_wholebody", "default", lambda pkg, layout: layout.INSTRUCTIONS),
    ("hic", "default", lambda pkg, layout: layout.INSTRUCTIONS),
    ("dexycb", "s0", lambda pkg, layout: layout.INSTRUCTIONS),
    ("fphab", "hand_object_480", lambda pkg, layout: layout.INSTRUCTIONS),
    ("interhand", "5fps_hm", lambda pkg, layout: layout.instructions()),
    ("freihand", "default", lambda pkg, layout: pkg.MANUAL_DOWNLOAD_INSTRUCTIONS),
    ("hanco", "default", lambda pkg, layout: pkg.MANUAL_DOWNLOAD_INSTRUCTIONS),
    ("ho3d", "v2", lambda pkg, layout: pkg.MANUAL_DOWNLOAD_INSTRUCTIONS),
]


@pytest.mark.parametrize("name,default,instructions", MANUAL_DATASETS, ids=[d[0] for d in MANUAL_DATASETS])
def test_manual_datasets_share_get_builder_and_ensure_built(tmp_path, name, default, instructions):
    import importlib
    import importlib.util

    package = importlib.import_module(f"data_pipelines.{name}")
    has_layout = importlib.util.find_spec(f"data_pipelines.{name}.layout") is not None
    layout = importlib.import_module(f"data_pipelines.{name}.layout") if has_layout else None
    builder = package.get_builder(default, str(tmp_path))
    assert os.fspath(builder.data_path) == os.path.join(str(tmp_path), name, default, str(builder.VERSION))
    # not built and no manual download: the error names dataset, config and builder dir, then the instructions
    with pytest.raises(FileNotFoundError) as err:
        package.ensure_built(default, str(tmp_path))
    text = str(err.value)
    assert text.startswith(f"{name}/{default} is not built under {builder.data_path}; give the raw download "
                           "(data.manual_dir / --manual_dir) to build it.")
    assert text.endswith("\n\n" + instructions(package, layout))
    if name != "dexycb":  # dexycb configs are setups (make_config)
        with pytest.raises(ValueError, match=f"unknown {name} config 'nope'; known: "):
            package.get_builder("nope", str(tmp_path))
    assert package.default_data_dir() == manual.default_data_dir()


@pytest.mark.parametrize("name", ["coco_wholebody", "hic", "interhand"])
def test_build_command_help_layout_prints_the_instructions(capsys, name):
    import importlib

    build = importlib.import_module(f"data_pipelines.{name}.build")
    layout = importlib.import_module(f"data_pipelines.{name}.layout")
    assert build.main(["--help_layout"]) == ""
    expected = layout.instructions() if name == "interhand" else layout.INSTRUCTIONS
    assert capsys.readouterr().out == expected + "\n"


def test_run_command_exits_with_the_message_of_manual_errors_only():
    def bad_dir():
        raise manual.ManualDirError("demo: 2 required entries missing", ["a", "b"])

    def corrupt():
        raise manual.CorruptFileError("/x/y.json", "not json")

    def other():
        raise KeyError("boom")

    with pytest.raises(SystemExit) as err:
        manual.run_command(bad_dir)
    assert err.value.code == "error: demo: 2 required entries missing"
    with pytest.raises(SystemExit) as err:
        manual.run_command(corrupt)
    assert err.value.code.startswith("error: ") and "/x/y.json" in err.value.code and "not json" in err.value.code
    with pytest.raises(KeyError):  # anything else keeps its traceback
        manual.run_command(other)
    assert manual.run_command(lambda: "done") is None
