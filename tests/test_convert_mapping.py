"""Tests for handjax.convert.mapping and the torchvision ResNet rule set."""
from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from handjax.convert import (  # noqa: E402
    MANO_REASON,
    ConversionError,
    Ignore,
    Rule,
    apply_rules,
    apply_to_model,
    flatten_tree,
    torchvision_resnet_rules,
)


def np_sd(module: nn.Module, prefix: str = "") -> collections.OrderedDict:
    return collections.OrderedDict((prefix + k, v.detach().numpy().copy()) for k, v in module.state_dict().items())


def zeros(*shape, dtype=np.float32):
    """Shape/dtype-only stand-in leaf (no memory)."""
    return np.broadcast_to(np.zeros((), dtype), shape)


# --------------------------------------------------------------------------- transforms vs torch


def test_conv_and_linear_transforms_match_torch_outputs():
    from flax import nnx

    torch.manual_seed(0)
    tconv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    tlin = nn.Linear(5, 4)
    x = torch.randn(2, 3, 9, 9)
    ref_conv = tconv(x)
    ref_lin = tlin(ref_conv.mean((2, 3)))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), rngs=rngs)
            self.lin = nnx.Linear(5, 4, rngs=rngs)

    net = Net(nnx.Rngs(0))
    sd = np_sd(tconv, "c.") | np_sd(tlin, "l.")
    rules = [Rule(r"c\.weight", "conv.kernel", "conv"), Rule(r"c\.bias", "conv.bias"),
             Rule(r"l\.weight", "lin.kernel", "linear"), Rule(r"l\.bias", "lin.bias", "identity")]
    report = apply_to_model(net, sd, rules)
    assert len(report.assigned) == 4
    xj = x.numpy().transpose(0, 2, 3, 1)
    out_conv = np.asarray(net.conv(xj))
    np.testing.assert_allclose(out_conv, ref_conv.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(net.lin(out_conv.mean((1, 2)))), ref_lin.detach().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_transform_layouts_hand_computed():
    w = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # O, I, H, W
    out, _ = apply_rules({"w": w, "l": w[0, :, :, 0], "v": w[0, 0, 0]},
                         [Rule("w", "k", "conv"), Rule("l", "m", "linear"), Rule("v", "t", "transpose")],
                         {"k": zeros(4, 5, 3, 2), "m": zeros(4, 3), "t": zeros(5)})
    for o, i, h, x in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 0, 2, 1)]:
        assert out["k"][h, x, i, o] == w[o, i, h, x]
    np.testing.assert_array_equal(out["m"], w[0, :, :, 0].T)
    assert out["k"].flags.c_contiguous


# --------------------------------------------------------------------------- strict accounting


def _toy():
    sd = collections.OrderedDict(
        [("enc.weight", np.ones((4, 3), np.float32)), ("enc.bias", np.zeros(4, np.float32)),
         ("bn.running_mean", np.arange(4, dtype=np.float32))])
    rules = [Rule(r"enc\.weight", "enc.kernel", "linear"), Rule(r"enc\.bias", "enc.bias"),
             Rule(r"bn\.running_mean", "bn.mean", "bn_mean")]
    tree = {"enc": {"kernel": zeros(3, 4), "bias": zeros(4)}, "bn": {"mean": zeros(4)}}
    return sd, rules, tree


def test_toy_mapping_succeeds():
    sd, rules, tree = _toy()
    out, report = apply_rules(sd, rules, tree)
    np.testing.assert_array_equal(out["enc"]["kernel"], np.ones((3, 4)))
    np.testing.assert_array_equal(out["bn"]["mean"], np.arange(4))
    assert [a[:2] for a in report.assigned] == [("enc.weight", "enc.kernel"), ("enc.bias", "enc.bias"),
                                                ("bn.running_mean", "bn.mean")]


def test_missing_target_raises_naming_it():
    sd, rules, tree = _toy()
    tree["head"] = {"kernel": zeros(4, 2)}
    with pytest.raises(ConversionError, match=r"not filled.*\n.*head\.kernel \(4, 2\)") as e:
        apply_rules(sd, rules, tree, source_name="/ckpt/x.pth")
    assert "/ckpt/x.pth" in str(e.value)
    assert e.value.missing_targets == ["head.kernel (4, 2) float32"] and e.value.unused_sources == []


def test_unused_source_raises_naming_it():
    sd, rules, tree = _toy()
    sd["extra.weight"] = np.ones((2, 2), np.float32)
    with pytest.raises(ConversionError, match=r"matched by no Rule or Ignore.*\n.*extra\.weight") as e:
        apply_rules(sd, rules, tree)
    assert e.value.unused_sources == ["extra.weight (2, 2)"]


def test_shape_mismatch_reports_both_shapes():
    sd, rules, tree = _toy()
    sd["enc.weight"] = np.ones((4, 5), np.float32)
    with pytest.raises(ConversionError, match=r"enc\.weight \(4, 5\) -> enc\.kernel: after 'linear' "
                                              r"\(5, 4\), target expects \(3, 4\)"):
        apply_rules(sd, rules, tree)


def test_all_violations_in_one_error():
    sd, rules, tree = _toy()
    tree["head"] = {"kernel": zeros(4, 2)}
    tree["head2"] = {"kernel": zeros(2)}
    sd["extra.weight"] = np.ones(1, np.float32)
    sd["enc.bias"] = np.zeros(7, np.float32)
    sd["dup"] = np.zeros(4, np.float32)
    sd["nowhere"] = np.zeros(4, np.float32)
    sd["conv_on_vector"] = np.zeros(4, np.float32)
    sd["f64"] = np.zeros(4, np.float64)
    rules = rules + [Rule("dup", "bn.mean"), Rule("nowhere", "bn.nothing"), Rule("conv_on_vector", "bn", "conv"),
                     Rule("f64", "head.kernel")]
    with pytest.raises(ConversionError) as e:
        apply_rules(sd, rules, tree)
    err = e.value
    assert err.missing_targets == ["head2.kernel (2,) float32"]  # failed assignments are not "missing"
    assert err.unused_sources == ["extra.weight (1,)"]
    assert err.shape_mismatches == ["enc.bias (7,) -> enc.bias: after 'identity' (7,), target expects (4,)",
                                    "f64 (4,) -> head.kernel: after 'identity' (4,), target expects (4, 2)"]
    assert err.duplicate_targets == ["bn.mean <- bn.running_mean and dup"]
    assert err.unknown_targets == ["nowhere -> bn.nothing", "conv_on_vector -> bn"]
    for title in ("not filled", "no Rule or Ignore", "shape mismatches", "more than one source", "not leaves"):
        assert title in str(err)


def test_dtype_check_and_allow_cast():
    tree = {"a": zeros(3), "i": zeros(2, dtype=np.int32)}
    sd = {"a": np.ones(3, np.float64), "i": np.array([1, 2], np.int64)}
    rules = [Rule("a", "a"), Rule("i", "i")]
    with pytest.raises(ConversionError) as e:
        apply_rules(sd, rules, tree)
    assert e.value.dtype_mismatches == ["a float64 -> a: target dtype float32", "i int64 -> i: target dtype int32"]
    out, report = apply_rules(sd, rules, tree, allow_cast=True)
    assert out["a"].dtype == np.float32 and out["i"].dtype == np.int32
    np.testing.assert_array_equal(out["i"], [1, 2])
    assert len(report.cast) == 2
    with pytest.raises(ConversionError, match="i int64 -> i: target dtype int32"):
        apply_rules({"a": sd["a"], "i": np.array([1, 2**40])}, rules, tree, allow_cast=True)
    with pytest.raises(ConversionError, match="a int64 -> a: target dtype float32"):
        apply_rules({"a": np.ones(3, np.int64), "i": sd["i"]}, rules, tree, allow_cast=True)


def test_transform_error_is_collected():
    with pytest.raises(ConversionError, match=r"w -> k: linear: 'linear' expects a \(out, in\) weight"):
        apply_rules({"w": np.ones((2, 2, 2), np.float32)}, [Rule("w", "k", "linear")], {"k": zeros(2, 2)})


def test_first_match_wins_and_ignore_reason():
    sd = {"fc.weight": np.ones((2, 2), np.float32), "a.weight": np.ones((2, 2), np.float32)}
    rules = [Ignore(r"fc\..*", "classifier not used"), Rule(r"(\w+)\.weight", r"\1.kernel", "linear")]
    out, report = apply_rules(sd, rules, {"a": {"kernel": zeros(2, 2)}})
    assert report.ignored == [("fc.weight", "classifier not used")]
    assert report.assigned == [("a.weight", "a.kernel", "linear")]


def test_callable_target_and_transform_and_int_keys():
    tree = {"blocks": {0: {"w": zeros(2)}, 1: {"w": zeros(2)}}, "named": {"7": {"w": zeros(2)}}}
    sd = {"b.0": np.array([1.0, 2.0], np.float32), "b.1": np.array([3.0, 4.0], np.float32),
          "n.7": np.array([5.0, 6.0], np.float32)}

    def double(x):
        return 2 * x

    rules = [Rule(r"b\.(\d)", lambda m: ("blocks", int(m.group(1)), "w"), double),
             Rule(r"n\.(\d)", r"named.\1.w")]
    out, report = apply_rules(sd, rules, tree)
    np.testing.assert_array_equal(out["blocks"][1]["w"], [6.0, 8.0])
    np.testing.assert_array_equal(out["named"]["7"]["w"], [5.0, 6.0])  # str digit key kept as str
    assert report.assigned[0] == ("b.0", "blocks.0.w", "double")


def test_rule_validation():
    with pytest.raises(ValueError, match=r"invalid regex '\('"):
        Rule("(", "x")
    with pytest.raises(ValueError, match="unknown transform 'rot90'"):
        Rule("a", "x", "rot90")
    with pytest.raises(ValueError, match="non-empty reason"):
        Ignore("a", " ")


# --------------------------------------------------------------------------- MANO guard


MANO_KEYS = ["model.v_template", "model.shapedirs", "model.posedirs", "model.J_regressor", "model.lbs_weights",
             "model.faces_tensor", "mano_layer.th_weights", "mano_layer.th_comps", "layer.hands_components",
             "hands_mean", "smplx.left_hand_components", "model.faces", "mano.th_v_template"]
NOT_MANO = ["wrist_pose_mean", "hand_pose_mean", "model.extra_joint_selector.bcs", "regressor.mean_param",
            "decoder.weights", "model.faces_count"]


def test_mano_buffers_never_written():
    sd = {k: np.full(3, 9.0, np.float32) for k in MANO_KEYS + NOT_MANO}
    user_template = np.full(3, 1.0, np.float32)
    tree = {"mano": {"v_template": user_template}, **{k: zeros(3) for k in NOT_MANO}}
    catch_all = [Rule(r"(.*)", lambda m: (m.group(1),))]  # would map every key verbatim
    out, report = apply_rules(sd, catch_all, tree)
    assert sorted(k for k, r in report.ignored if r == MANO_REASON) == sorted(MANO_KEYS)
    assert sorted(a[0] for a in report.assigned) == sorted(NOT_MANO)
    assert out["mano"]["v_template"] is user_template
    assert report.kept_targets == ["mano.v_template"]
    for path, leaf in flatten_tree(out).items():
        assert ".".join(map(str, path)) not in MANO_KEYS


def test_rule_writing_a_mano_target_is_refused():
    with pytest.raises(ConversionError, match=r"MANO.*\n.*tmpl -> mano\.v_template"):
        apply_rules({"tmpl": np.zeros(3, np.float32)}, [Rule("tmpl", "mano.v_template")],
                    {"mano": {"v_template": zeros(3)}})


def test_keep_targets_and_extra_never_write():
    tree = {"a": zeros(2), "b": zeros(2)}
    sd = {"a": np.ones(2, np.float32), "secret.x": np.ones(2, np.float32)}
    out, report = apply_rules(sd, [Rule("a", "a")], tree, keep_targets=("b",), never_write=(r"secret\..*",))
    assert report.kept_targets == ["b"] and ("secret.x", MANO_REASON) in report.ignored


# --------------------------------------------------------------------------- torchvision ResNet


class TvBasic(nn.Module):
    expansion = 1

    def __init__(self, inp, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inp != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TvResNet(nn.Module):
    """Hand-written torchvision-naming ResNet (torchvision itself is not installed)."""

    def __init__(self, depth):
        super().__init__()
        block, counts = {18: (TvBasic, (2, 2, 2, 2)), 50: (TvBottleneck, (3, 4, 6, 3))}[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for j in range(n):
                blocks.append(block(inp, planes, 2 if (i > 0 and j == 0) else 1))
                inp = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inp, 1000)

    def forward(self, x):
        y = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return y.mean((2, 3))


def randomise_bn(model: nn.Module, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def hand_built_resnet18_tree():
    """Target tree of the agreed nnx ResNet-18 naming, written from the spec (not from torch)."""
    def bn(c):
        return {"scale": zeros(c), "bias": zeros(c), "mean": zeros(c), "var": zeros(c)}

    tree = {"conv1": {"kernel": zeros(7, 7, 3, 64)}, "bn1": bn(64)}
    inp = 64
    for i, planes in enumerate((64, 128, 256, 512)):
        layer = {}
        for j in range(2):
            block = {"conv1": {"kernel": zeros(3, 3, inp, planes)}, "bn1": bn(planes),
                     "conv2": {"kernel": zeros(3, 3, planes, planes)}, "bn2": bn(planes)}
            if j == 0 and i > 0:
                block["downsample"] = {0: {"kernel": zeros(1, 1, inp, planes)}, 1: bn(planes)}
            layer[j] = block
            inp = planes
        tree[f"layer{i + 1}"] = layer
    return tree


def test_resnet18_rules_on_hand_built_tree():
    torch.manual_seed(0)
    tv = TvResNet(18)
    sd = np_sd(tv, "backbone.")
    assert len(sd) == 122  # 120 backbone tensors (tempclr.md 2.3) + fc.weight/bias
    target = {"backbone": hand_built_resnet18_tree()}
    out, report = apply_rules(sd, torchvision_resnet_rules("backbone.", "backbone"), target)
    assert len(report.assigned) == 100 and len(report.ignored) == 22  # 20 num_batches_tracked + fc
    assert {r for k, r in report.ignored if not k.startswith("backbone.fc")} == {"BatchNorm step counter: not used at inference"}
    b = out["backbone"]
    np.testing.assert_array_equal(b["conv1"]["kernel"], sd["backbone.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(b["layer3"][0]["downsample"][0]["kernel"][0, 0],
                                  sd["backbone.layer3.0.downsample.0.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(b["layer4"][1]["bn2"]["var"], sd["backbone.layer4.1.bn2.running_var"])
    np.testing.assert_array_equal(b["layer2"][0]["downsample"][1]["scale"],
                                  sd["backbone.layer2.0.downsample.1.weight"])


def test_resnet_rules_reject_wrong_depth():
    sd = np_sd(TvResNet(18))
    tree = hand_built_resnet18_tree()
    del tree["layer4"][1]
    with pytest.raises(ConversionError) as e:
        apply_rules(sd, torchvision_resnet_rules(), tree)
    assert e.value.unknown_targets == [f"layer4.1.{n} -> layer4.1.{m}" for n, m in [
        ("conv1.weight", "conv1.kernel"), ("bn1.weight", "bn1.scale"), ("bn1.bias", "bn1.bias"),
        ("bn1.running_mean", "bn1.mean"), ("bn1.running_var", "bn1.var"), ("conv2.weight", "conv2.kernel"),
        ("bn2.weight", "bn2.scale"), ("bn2.bias", "bn2.bias"), ("bn2.running_mean", "bn2.mean"),
        ("bn2.running_var", "bn2.var")]]


def test_resnet18_real_module_matches_torch():
    from flax import nnx

    from handjax.models.resnet import ResNet

    torch.manual_seed(0)
    tv = TvResNet(18).eval()
    randomise_bn(tv)
    model = ResNet(18, rngs=nnx.Rngs(0))
    report = apply_to_model(model, np_sd(tv), torchvision_resnet_rules())
    assert len(report.assigned) == 100
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tv(x).numpy()
    got = np.asarray(model(x.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_resnet50_rules_cover_real_module_tree():
    from flax import nnx

    from handjax.models.resnet import ResNet

    tv = TvResNet(50)
    sd = np_sd(tv, "backbone.")
    assert len(sd) - 2 == 318  # tempclr.md 2.3: 318 backbone tensors incl. BN buffers
    abstract = nnx.eval_shape(lambda: ResNet(50, rngs=nnx.Rngs(0)))
    tree = {"backbone": nnx.to_pure_dict(nnx.state(abstract, nnx.Any(nnx.Param, nnx.BatchStat)))}
    out, report = apply_rules(sd, torchvision_resnet_rules("backbone.", "backbone"), tree)
    assert len(report.assigned) == 318 - 53  # minus one num_batches_tracked per BatchNorm
    assert sum(v.size for k, v in sd.items() if not k.startswith("backbone.fc") and "running" not in k
               and "num_batches" not in k) == 23_508_032
    np.testing.assert_array_equal(out["backbone"]["layer1"][0]["downsample"][0]["kernel"],
                                  sd["backbone.layer1.0.downsample.0.weight"].transpose(2, 3, 1, 0))
