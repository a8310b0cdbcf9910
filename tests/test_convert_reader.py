"""Tests for handjax.convert.torch_reader / state_dict against files written by real torch."""
from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from handjax.convert import (  # noqa: E402
    CheckpointFormatError,
    InertObject,
    PlaceholderWarning,
    extract_state_dict,
    load_torch_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
FORMATS = pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])


def save(obj, path: Path, zip_format: bool) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def load(path):
    """Load, asserting no placeholder warning (for checkpoints made only of tensors/containers)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", PlaceholderWarning)
        return load_torch_checkpoint(path)


def ref(t: "torch.Tensor") -> np.ndarray:
    """Independent reference values: torch's own conversion (bf16 -> fp32 by torch)."""
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.detach().numpy()


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    net.bn.running_mean.uniform_(-1, 1)
    net.bn.running_var.uniform_(0.5, 2)
    net.bn.num_batches_tracked.fill_(7)
    return net


# --------------------------------------------------------------------------- dtypes


@FORMATS
def test_dtypes_match_torch(tmp_path, zip_format):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 5, generator=g)
    tensors = {
        "f32": base,
        "f64": base.double(),
        "f16": base.half(),
        "bf16": (base * 100).bfloat16(),
        "i64": torch.arange(-7, 8).reshape(3, 5) * 10**12,
        "i32": torch.arange(-7, 8, dtype=torch.int32),
        "i16": torch.arange(-7, 8, dtype=torch.int16),
        "i8": torch.arange(-7, 8, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": base > 0,
        "c64": torch.complex(base, -base),
        "u16": torch.tensor([1, 2, 65535]).to(torch.uint16),  # _rebuild_tensor_v3 + UntypedStorage
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    obj, report = load(save(tensors, tmp_path / "t.pt", zip_format))
    assert report.format == ("zip" if zip_format else "legacy")
    assert report.num_tensors == len(tensors)
    expected_dtypes = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": np.float32,
                       "i64": np.int64, "i32": np.int32, "i16": np.int16, "i8": np.int8, "u8": np.uint8,
                       "bool": np.bool_, "c64": np.complex64, "u16": np.uint16, "scalar": np.float32,
                       "empty": np.float32}
    for key, t in tensors.items():
        a = obj[key]
        assert isinstance(a, np.ndarray), key
        assert a.dtype == expected_dtypes[key], key
        assert a.shape == tuple(t.shape), key
        np.testing.assert_array_equal(a, ref(t), err_msg=key)


def test_float8_via_v3(tmp_path):
    t = torch.tensor([0.5, -1.25, 3.0, 448.0]).to(torch.float8_e4m3fn)
    obj, _ = load(save({"f8": t}, tmp_path / "f8.pt", True))
    np.testing.assert_array_equal(obj["f8"].astype(np.float32), t.float().numpy())


def test_big_endian_zip_records(tmp_path):
    """A zip archive declaring byteorder 'big' is decoded with big-endian elements."""
    src = save({"x": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, tmp_path / "le.pt", True)
    dst = tmp_path / "be.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(info.filename, data)
    obj, report = load(dst)
    assert report.byteorder == "big"
    np.testing.assert_array_equal(obj["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert obj["x"].dtype.isnative


# --------------------------------------------------------------------------- views and sharing


@FORMATS
def test_views_and_shared_storage(tmp_path, zip_format):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "base": base,
        "transposed": base.t(),
        "rows_offset": base[2:5],
        "strided": base[1::2, 3::3],
        "column": base[:, 7],
        "expanded": base[0, :4].unsqueeze(0).expand(3, 4),  # stride 0
        "permuted": base.reshape(2, 3, 10).permute(2, 0, 1),
        "half_view": base.half()[1:, ::4],
    }
    obj, report = load(save(views, tmp_path / "v.pt", zip_format))
    assert report.num_storages == 2  # base's storage (shared by all views) + the fp16 copy
    for key, t in views.items():
        assert obj[key].shape == tuple(t.shape), key
        assert obj[key].flags.c_contiguous and obj[key].flags.writeable, key
        np.testing.assert_array_equal(obj[key], ref(t.contiguous()), err_msg=key)
    obj["base"][0, 0] = -1.0  # copies: writing one view does not alter another
    assert obj["transposed"][0, 0] == 0.0


@FORMATS
def test_nested_containers(tmp_path, zip_format):
    t = torch.ones(2)
    payload = {
        "list": [t, 1, "two", 3.5, None, True],
        "tuple": (t, (t * 2,)),
        "dict": {"inner": {"deep": t * 3}, 5: "int key"},
        "set": {1, 2, 3},
        "frozen": frozenset({"a"}),
        "bytes": b"\x00\xffraw",
        "complex": 1 + 2j,
        "slice": slice(1, 5, 2),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "np_array": np.arange(4, dtype=np.int16).reshape(2, 2),
        "np_scalar": np.float64(2.25),
        "device": torch.device("cpu"),
        "dtype": torch.float16,
    }
    obj, _ = load(save(payload, tmp_path / "n.pt", zip_format))
    np.testing.assert_array_equal(obj["list"][0], np.ones(2, np.float32))
    assert obj["list"][1:] == [1, "two", 3.5, None, True]
    np.testing.assert_array_equal(obj["tuple"][1][0], np.full(2, 2.0, np.float32))
    np.testing.assert_array_equal(obj["dict"]["inner"]["deep"], np.full(2, 3.0, np.float32))
    assert obj["dict"][5] == "int key"
    assert obj["set"] == {1, 2, 3} and obj["frozen"] == frozenset({"a"})
    assert obj["bytes"] == b"\x00\xffraw" and obj["complex"] == 1 + 2j and obj["slice"] == slice(1, 5, 2)
    assert isinstance(obj["ordered"], collections.OrderedDict) and list(obj["ordered"]) == ["b", "a"]
    np.testing.assert_array_equal(obj["np_array"], payload["np_array"])
    assert obj["np_array"].dtype == np.int16
    assert obj["np_scalar"] == 2.25 and isinstance(obj["np_scalar"], np.float64)
    assert obj["device"] == "cpu"
    assert obj["dtype"].name == "float16"


@FORMATS
def test_module_state_dict_with_batchnorm(tmp_path, zip_format):
    net = tiny_net()
    sd = net.state_dict()
    obj, report = load(save(sd, tmp_path / "sd.pt", zip_format))
    assert isinstance(obj, collections.OrderedDict)
    assert list(obj) == list(sd)
    assert "bn.num_batches_tracked" in obj
    assert obj["bn.num_batches_tracked"].dtype == np.int64 and obj["bn.num_batches_tracked"] == 7
    for key, t in sd.items():
        np.testing.assert_array_equal(obj[key], ref(t), err_msg=key)
    assert report.placeholders == {}


# --------------------------------------------------------------------------- placeholders


class CustomState:
    def __init__(self):
        self.alpha = 0.5
        self.tensor = torch.full((2,), 4.0)


@FORMATS
def test_training_checkpoint_placeholders(tmp_path, zip_format):
    net = tiny_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss = net.fc(net.bn(net.conv(torch.randn(2, 3, 5, 5))).mean((2, 3))).sum()
    loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    ckpt = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "args": argparse.Namespace(lr=1e-3, name="run1"),
        "custom": CustomState(),
        "iteration": 12,
    }
    path = save(ckpt, tmp_path / "ckpt.pth", zip_format)
    with pytest.warns(PlaceholderWarning, match="argparse.Namespace") as rec:
        obj, report = load_torch_checkpoint(path)
    message = str(rec[0].message)
    assert str(path) in message and f"{__name__}.CustomState" in message
    assert set(report.placeholders) == {"argparse.Namespace", f"{__name__}.CustomState"}
    assert report.placeholders["argparse.Namespace"] == 1
    args = obj["args"]
    assert isinstance(args, InertObject) and args.global_name == "argparse.Namespace"
    assert args.state == {"lr": 1e-3, "name": "run1"}
    assert obj["custom"].state["alpha"] == 0.5
    np.testing.assert_array_equal(obj["custom"].state["tensor"], np.full(2, 4.0, np.float32))
    # Optimizer state is plain data with tensors: loaded exactly.
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    np.testing.assert_array_equal(obj["optimizer"]["state"][0]["exp_avg"], exp_avg.numpy())
    assert obj["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert obj["iteration"] == 12

    sd, ext = extract_state_dict(obj)
    assert ext.nested_path == ("model",)
    assert list(sd) == list(net.state_dict())


class Evil:
    def __init__(self, command: str, func):
        self.command, self.func = command, func

    def __reduce__(self):
        return (self.func, (self.command,))


@FORMATS
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.check_call"])
def test_malicious_pickle_is_neutralised(tmp_path, zip_format, payload):
    marker = tmp_path / "pwned"
    func, command = {
        "os.system": (os.system, f"touch {marker}"),
        "builtins.eval": (eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.check_call": (subprocess.check_call, ["touch", str(marker)]),
    }[payload]
    path = save({"weights": torch.ones(2), "evil": Evil(command, func)}, tmp_path / "evil.pt", zip_format)
    with pytest.warns(PlaceholderWarning):
        obj, report = load_torch_checkpoint(path)
    assert not marker.exists()
    expected_name = {"os.system": f"{os.name == 'posix' and 'posix' or 'nt'}.system",
                     "builtins.eval": "builtins.eval",
                     "subprocess.check_call": "subprocess.check_call"}[payload]
    assert report.placeholders == {expected_name: 1}
    assert isinstance(obj["evil"], InertObject) and obj["evil"].global_name == expected_name
    assert obj["evil"].args == (command,)
    np.testing.assert_array_equal(obj["weights"], np.ones(2, np.float32))
    # Control: the payload is live -- torch's unrestricted loader does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def _unicode(text: str) -> bytes:
    """BINUNICODE opcode."""
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def test_handcrafted_pickle_opcodes_stay_inert(tmp_path):
    """NEWOBJ + BUILD, OBJ, INST and REDUCE on non-allowed callables never run code."""
    marker = tmp_path / "pwned"
    cmd = _unicode(f"touch {marker}")
    body = (
        b"\x80\x02("                                           # PROTO 2, MARK (list items)
        b"cos\nsystem\n)\x81}" + _unicode("a") + b"K\x01sb"     # NEWOBJ os.system(), BUILD {'a': 1}
        b"(cposix\nsystem\n" + cmd + b"o"                       # OBJ posix.system(cmd)
        b"(" + cmd + b"ios\nsystem\n"                           # INST os.system(cmd)
        b"cbuiltins\nexec\n" + _unicode("import os; os.system('touch " + str(marker) + "')")
        + b"\x85R"                                              # REDUCE builtins.exec(code)
        b"l."                                                   # LIST, STOP
    )
    archive = tmp_path / "crafted.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("crafted/data.pkl", body)
    with pytest.warns(PlaceholderWarning):
        obj, report = load_torch_checkpoint(archive)
    assert not marker.exists()
    assert [o.global_name for o in obj] == ["os.system", "posix.system", "os.system", "builtins.exec"]
    assert obj[0].args == () and obj[0].state == {"a": 1}
    assert obj[1].args == obj[2].args == (f"touch {marker}",)
    assert report.placeholders == {"os.system": 2, "posix.system": 1, "builtins.exec": 1}


def test_allocation_bombs_are_refused(tmp_path):
    """numpy _reconstruct with a non-empty shape and huge zero-stride tensors raise instead of allocating."""
    body = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x40\x85C\x01b\x87R."
    archive = tmp_path / "np_bomb.pt"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("np_bomb/data.pkl", body)
    with pytest.raises(CheckpointFormatError, match=r"np_bomb\.pt.*_reconstruct with non-empty shape \(1073741824,\)"):
        load_torch_checkpoint(archive)

    src = save({"e": torch.zeros(1).expand(1000)}, tmp_path / "expand.pt", True)
    np.testing.assert_array_equal(load(src)[0]["e"], np.zeros(1000, np.float32))  # a modest expand is fine
    big = _rewrite_zip(src, tmp_path / "expand_bomb.pt",
                       replace=("data.pkl", lambda b: b.replace(b"M\xe8\x03\x85", b"J\x00\x00\x00\x40\x85")))
    with pytest.raises(CheckpointFormatError, match=r"expand_bomb\.pt.*1073741824 elements.*refusing"):
        load_torch_checkpoint(big)


@FORMATS
def test_whole_module_pickle(tmp_path, zip_format):
    net = tiny_net()
    path = save(net, tmp_path / "model.pt", zip_format)
    with pytest.warns(PlaceholderWarning, match="TinyNet"):
        obj, _ = load_torch_checkpoint(path)
    sd, ext = extract_state_dict(obj, to_float32=False)
    assert list(sd) == list(net.state_dict())
    for key, t in net.state_dict().items():
        np.testing.assert_array_equal(sd[key], ref(t), err_msg=key)


# --------------------------------------------------------------------------- extraction


def test_extract_wrappers_and_prefixes(tmp_path):
    net = tiny_net()
    sd = net.state_dict()
    dp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    lightning = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "0.9.0",
                 "state_dict": collections.OrderedDict(("model." + k, v.half() if v.is_floating_point() else v)
                                                       for k, v in sd.items()),
                 "optimizer_states": [{}], "hparams": {"lr": 1.0}}
    tempclr = {"model": collections.OrderedDict([("model.v_template", torch.zeros(3, 3)),
                                                 ("backbone.conv1.weight", torch.ones(2, 3, 1, 1)),
                                                 ("regressor.mean_param", torch.zeros(1, 109)),
                                                 ("flag", 3)]),
               "optimizer": {"state": {}}, "scheduler": {"last_epoch": 1}, "iteration": 5, "epoch_number": 2}
    for name, ckpt in [("dp", dp), ("lightning", lightning), ("tempclr", tempclr)]:
        save(ckpt, tmp_path / f"{name}.pt", True)

    obj, _ = load(tmp_path / "dp.pt")
    out, rep = extract_state_dict(obj)
    assert list(out) == list(sd) and rep.stripped_prefixes == ("module.",) and rep.nested_path == ()

    obj, _ = load(tmp_path / "lightning.pt")
    out, rep = extract_state_dict(obj)
    assert rep.nested_path == ("state_dict",) and rep.stripped_prefixes == ("model.",)
    assert list(out) == list(sd)
    assert out["conv.weight"].dtype == np.float32 and "conv.weight" in rep.cast_to_float32
    np.testing.assert_array_equal(out["conv.weight"], sd["conv.weight"].half().float().numpy())
    assert out["bn.num_batches_tracked"].dtype == np.int64
    out16, _ = extract_state_dict(obj, to_float32=False)
    assert out16["conv.weight"].dtype == np.float16
    out_keep, rep_keep = extract_state_dict(obj, prefixes_to_strip=())
    assert next(iter(out_keep)) == "model.conv.weight" and rep_keep.stripped_prefixes == ()

    obj, _ = load(tmp_path / "tempclr.pt")
    out, rep = extract_state_dict(obj)
    assert rep.nested_path == ("model",)
    # 'model.' is not shared by all keys: nothing stripped.
    assert list(out) == ["model.v_template", "backbone.conv1.weight", "regressor.mean_param"]
    assert rep.skipped == ["flag: int"]


def test_extract_errors():
    with pytest.raises(TypeError, match="dict-like"):
        extract_state_dict([1, 2])
    with pytest.raises(ValueError, match="no tensors found under model"):
        extract_state_dict({"model": {"a": 1}})


# --------------------------------------------------------------------------- errors


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="garbage.pt"):
        load_torch_checkpoint(garbage)
    bad_magic = tmp_path / "bad_magic.pt"
    bad_magic.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(CheckpointFormatError, match="bad_magic.pt.*magic"):
        load_torch_checkpoint(bad_magic)


def _rewrite_zip(src: Path, dst: Path, drop=None, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = zin.read(info)
            if replace and info.filename.endswith(replace[0]):
                data = replace[1](data)
            zout.writestr(info.filename, data)
    return dst


def test_corrupt_archives(tmp_path):
    src = save({"w": torch.arange(12.0).reshape(3, 4)}, tmp_path / "ok.pt", True)
    missing = _rewrite_zip(src, tmp_path / "missing.pt", drop="/data/0")
    with pytest.raises(CheckpointFormatError, match=r"missing\.pt.*data/0.*missing"):
        load_torch_checkpoint(missing)
    short = _rewrite_zip(src, tmp_path / "short.pt", replace=("/data/0", lambda b: b[:20]))
    with pytest.raises(CheckpointFormatError, match=r"short\.pt.*20 bytes, expected 48"):
        load_torch_checkpoint(short)
    # Tensor geometry reading past its storage (size (3, 4) -> (3, 5) with stride (4, 1)).
    def grow(b):
        return b.replace(b"K\x03K\x04\x86", b"K\x03K\x05\x86")
    oob = _rewrite_zip(src, tmp_path / "oob.pt", replace=("data.pkl", grow))
    with pytest.raises(CheckpointFormatError, match=r"oob\.pt.*storage '0'.*reads element 12"):
        load_torch_checkpoint(oob)


def test_truncated_legacy_file(tmp_path):
    src = save({"w": torch.arange(12.0)}, tmp_path / "ok.pt", False)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(src.read_bytes()[:-10])
    with pytest.raises(CheckpointFormatError, match=r"cut\.pt.*storage"):
        load_torch_checkpoint(cut)


# --------------------------------------------------------------------------- torch not importable


BLOCKED_SCRIPT = r"""
import json, sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
try:
    import torch
    raise SystemExit("torch import was not blocked")
except ImportError:
    pass
from handjax.convert import load_torch_checkpoint, extract_state_dict
out = {}
for path in sys.argv[1:]:
    obj, report = load_torch_checkpoint(path)
    sd, _ = extract_state_dict(obj, to_float32=False)
    out[path] = {k: [str(v.dtype), list(v.shape), v.astype("float64").ravel().tolist()] for k, v in sd.items()}
assert "torch" not in sys.modules
print(json.dumps(out))
"""


def test_reader_works_with_torch_blocked(tmp_path):
    net = tiny_net()
    sd = net.state_dict()
    sd["half"] = torch.linspace(-1, 1, 5).half()
    sd["bf16"] = torch.linspace(-3, 3, 7).bfloat16()[::2]
    paths = [str(save(sd, tmp_path / "z.pt", True)), str(save(sd, tmp_path / "l.pt", False))]
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script), *paths], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for path in paths:
        got = result[path]
        assert list(got) == list(sd)
        for key, t in sd.items():
            dtype, shape, values = got[key]
            assert dtype == str(ref(t).dtype) and shape == list(t.shape), key
            np.testing.assert_array_equal(np.array(values), ref(t).astype(np.float64).ravel(), err_msg=key)
