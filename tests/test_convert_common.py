"""handjax.convert.common: opening a release (checks, errors), filling a model, writing the result.

Checkpoints are small ``torch.save`` files written here in the real (zip) format; the expected
arrays are the torch tensors themselves, so every value check compares against torch.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from handjax.convert import ConversionError, Ignore, Rule  # noqa: E402
from handjax.convert.common import (  # noqa: E402
    REPORT_FILE,
    ConversionReport,
    fill_from_state_dict,
    open_release,
    write_conversion,
)
from handjax.models.checkpoint import MODEL_META, load_model  # noqa: E402

WEIGHT = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7  # nn.Linear(4, 3).weight layout (out, in)
BIAS = torch.tensor([0.5, -1.0, 2.0])
RULES = [Rule(r"fc\.weight", "kernel", "linear"), Rule(r"fc\.bias", "bias"), Ignore(r"fc\.steps", "a counter")]


@pytest.fixture
def release_file(tmp_path):
    """A DataParallel-style snapshot: {'epoch', 'name', 'network': {'module.fc.*'}, 'optimizer'}."""
    path = tmp_path / "release" / "snapshot_3.pth"
    path.parent.mkdir()
    torch.save({"epoch": 3, "name": "run", "optimizer": {"lr": 0.1},
                "network": {"module.fc.weight": WEIGHT, "module.fc.bias": BIAS,
                            "module.fc.steps": torch.tensor(9)}}, str(path))
    return path


def _open(path, out):
    return open_release(path, out, expected="snapshot_<epoch>.pth", nested_keys=("network",))


def test_open_release_reads_the_nested_state_dict(release_file, tmp_path):
    rel = _open(release_file, tmp_path / "out")
    assert rel.path == str(release_file) and os.path.isabs(rel.path)
    assert rel.out_dir == str(tmp_path / "out") and not os.path.exists(rel.out_dir)  # checked, not created
    assert list(rel.state_dict) == ["fc.weight", "fc.bias", "fc.steps"]
    np.testing.assert_array_equal(rel.state_dict["fc.weight"], WEIGHT.numpy())
    np.testing.assert_array_equal(rel.state_dict["fc.bias"], BIAS.numpy())
    assert rel.extract.nested_path == ("network",) and rel.extract.stripped_prefixes == ("module.",)
    assert rel.int_entry("epoch") == 3
    assert rel.int_entry("name") is None and rel.int_entry("iteration") is None  # not an int / absent
    assert set(rel.obj) == {"epoch", "name", "optimizer", "network"}


def test_open_release_errors_name_the_path_and_what_was_expected(release_file, tmp_path):
    folder = release_file.parent
    with pytest.raises(IsADirectoryError, match=rf"--checkpoint {folder} is a folder; expected snapshot_<epoch>\.pth"):
        _open(folder, tmp_path / "out")
    missing = folder / "snapshot_9.pth"
    with pytest.raises(FileNotFoundError, match=rf"--checkpoint {missing}: no such file \(expected snapshot_"):
        _open(missing, tmp_path / "out")

    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match=rf"--out {a_file} is a file"):
        _open(release_file, a_file)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=rf"--out {busy} exists, is not empty and is not a handjax model"):
        _open(release_file, busy)
    earlier = tmp_path / "earlier"  # an earlier conversion may be overwritten ...
    earlier.mkdir()
    (earlier / MODEL_META).write_text("{}")
    assert _open(release_file, earlier).out_dir == str(earlier)
    inside = earlier / "snapshot_3.pth"  # ... but not when the source checkpoint lies in it
    inside.write_bytes(release_file.read_bytes())
    with pytest.raises(FileExistsError, match=rf"--out {earlier} is the folder of the source checkpoint"):
        _open(inside, earlier)

    a_list = tmp_path / "list.pth"
    torch.save([WEIGHT], str(a_list))
    with pytest.raises(ValueError, match=rf"{a_list}: expected a state dict or a Lightning dict, got list"):
        open_release(a_list, tmp_path / "out", expected="x.pth", nested_keys=("state_dict",),
                     contents="a state dict or a Lightning dict")
    no_tensors = tmp_path / "empty.pth"
    torch.save({"epoch": 1, "network": {"note": "none"}}, str(no_tensors))
    with pytest.raises(ValueError, match=rf"{no_tensors}: extract_state_dict: no tensors found under network"):
        _open(no_tensors, tmp_path / "out")


def test_fill_write_and_load_round_trip(release_file, tmp_path):
    rel = _open(release_file, tmp_path / "out")
    abstract = nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    model, mapping = fill_from_state_dict(abstract, rel.state_dict, RULES, source_name=rel.path)
    np.testing.assert_array_equal(np.asarray(model.kernel[...]), WEIGHT.numpy().T)  # (out, in) -> (in, out)
    np.testing.assert_array_equal(np.asarray(model.bias[...]), BIAS.numpy())
    assert ("fc.steps", "a counter") in mapping.ignored

    meta = {"system": "toy", "epoch": rel.int_entry("epoch")}
    report = ConversionReport("toy", rel.path, None, 18, rel.load, rel.extract, mapping, meta, notes=["a note"])
    write_conversion(model, rel.out_dir, meta, report)
    assert report.out_dir == rel.out_dir
    with open(os.path.join(rel.out_dir, REPORT_FILE)) as fh:
        text = fh.read()
    assert text == report.summary(per_tensor=True) + "\n"
    lines = text.splitlines()
    assert lines[0] == f"toy: {rel.path}" and lines[1] == "  note: a note"
    assert "  state dict under network, prefixes stripped: ['module.']" in lines
    assert "  model: ResNet-18" in lines
    assert "    used     fc.weight -> kernel [linear]" in lines and "    ignored  fc.steps: a counter" in lines
    assert lines[-1] == f"written: {rel.out_dir} (handjax model-only checkpoint)"
    with open(os.path.join(rel.out_dir, MODEL_META)) as fh:
        assert json.load(fh) == meta

    fresh = nnx.Linear(4, 3, rngs=nnx.Rngs(5))
    assert load_model(fresh, rel.out_dir) == meta
    np.testing.assert_array_equal(np.asarray(fresh.kernel[...]), WEIGHT.numpy().T)
    np.testing.assert_array_equal(np.asarray(fresh.bias[...]), BIAS.numpy())


def test_model_line_is_the_only_line_a_system_overrides(release_file, tmp_path):
    rel = _open(release_file, tmp_path / "out")
    abstract = nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    _, mapping = fill_from_state_dict(abstract, rel.state_dict, RULES, source_name=rel.path)

    class Toy(ConversionReport):
        def model_line(self) -> str:
            return "model: a toy head"

    args = ("toy", rel.path, None, 18, rel.load, rel.extract, mapping)
    plain, toy = ConversionReport(*args).summary().splitlines(), Toy(*args).summary().splitlines()
    assert [i for i, (a, b) in enumerate(zip(plain, toy)) if a != b] == [plain.index("  model: ResNet-18")]
    assert "  model: a toy head" in toy and len(plain) == len(toy)


def test_fill_reports_every_unmapped_key(release_file, tmp_path):
    rel = _open(release_file, tmp_path / "out")
    abstract = nnx.eval_shape(lambda: nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(ConversionError, match=r"(?s)snapshot_3\.pth.*fc\.steps"):
        fill_from_state_dict(abstract, rel.state_dict, RULES[:2], source_name=rel.path)  # no Ignore for the counter
