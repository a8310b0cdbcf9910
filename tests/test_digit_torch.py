"""DIGIT against the PyTorch reference (tests/torch_reference/digit_torch.py, random weights,
perturbed BatchNorm statistics), saved in the released layouts and converted with the real CLI
(``python -m handjax.convert digit``): segmentation logits, 2.5D joints, root depth and handedness
agree within 1e-4 (relative) in float32, eval mode; gradients of the 2.5D joint loss agree in
train mode; both file layouts (plain ``model.pose_reg.*`` state dict, Lightning ``state_dict``
in fp16) convert; missing / extra / misshapen keys are errors naming them; the full-size key
list of the reference equals DIGIT's 1903 entries and converts into ``configs/digit.py:recipe=paper``'s
model."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from handjax.convert import digit as C  # noqa: E402
from handjax.convert.__main__ import main as convert_main  # noqa: E402
from handjax.convert.mapping import ConversionError  # noqa: E402
from handjax.models.checkpoint import load_model, read_meta  # noqa: E402
from handjax.models.digit import IMAGENET_MEAN, IMAGENET_STD, DigitModel, DigitSpec  # noqa: E402
from torch_reference.digit_torch import Model, perturb_bn  # noqa: E402

TSV = "/work/shared/reference/digit_state_dict_keys.tsv"
HRNET = dict(width=4, layer1_planes=4, layer1_blocks=1, stages=((1, 1), (2, 1), (2, 1)))
SPEC = dict(seg_mid=4, seg_hidden=8, seg_feat=(8, 12), unet_base=4, head=(8, 8, 12, 12, 16, 16), fc=12, root_bins=64)
S = 64


def _torch_model(seed=0):
    torch.manual_seed(seed)
    m = Model(hrnet_kw=HRNET, **SPEC)
    perturb_bn(m, seed)
    return m


def _save(sd, path, layout):
    if layout == "plain":
        torch.save({"model." + k: v for k, v in sd.items()}, path)
    else:  # Lightning: {'state_dict': {'model.pose_reg.*'}, ...}, fp16 weights
        torch.save({"epoch": 3, "global_step": 120, "state_dict": {"model." + k: (v.half() if v.is_floating_point()
                                                                                    else v) for k, v in sd.items()}},
                   path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digit_convert")
    tm = _torch_model()
    paths = {}
    for layout in ("plain", "lightning"):
        src = str(tmp / f"{layout}.pt")
        _save(tm.state_dict(), src, layout)
        out = str(tmp / f"out_{layout}")
        assert convert_main(["digit", "--checkpoint", src, "--out", out, "--brief"]) == 0
        paths[layout] = out
    return tm, paths


def _jax_model(path):
    meta = read_meta(path)
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["spec"].items()}
    kw = dict(meta["backbone_kw"])
    kw["stages"] = tuple(tuple(s) for s in kw["stages"])
    m = DigitModel(rngs=nnx.Rngs(1), backbone=meta["backbone"], backbone_kw=kw, spec=DigitSpec(**spec),
                   conv_impl="xla")
    load_model(m, path)
    return m, meta


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    unit = rng.uniform(size=(n, S, S, 3)).astype(np.float32)
    normed = (unit - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return unit, normed


def _close(got, ref, name):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * max(np.abs(ref).max(), 1e-6), err_msg=name)


def test_forward_parity_eval_mode(converted):
    tm, paths = converted
    jm, meta = _jax_model(paths["plain"])
    assert meta["backbone_kw"]["width"] == 4 and meta["spec"]["head"] == list(SPEC["head"])
    unit, normed = _images()
    tm.eval()
    with torch.no_grad():
        ref = tm(torch.from_numpy(unit).permute(0, 3, 1, 2))
    jm.eval()
    out = nnx.jit(lambda m, x: m(x))(jm, jnp.asarray(normed))
    _close(np.transpose(np.asarray(out.segm_logits), (0, 3, 1, 2)), ref["segm_logits"].numpy(), "segm logits")
    _close(out.joints25d, ref["joints25d"].numpy(), "2.5D joints")
    _close(out.rel_root, ref["rel_root"].numpy(), "root depth")
    _close(out.hand_logits, ref["hand_logits"].numpy(), "handedness")
    assert out.segm_logits.shape == (2, S // 2, S // 2, 33) and out.joints25d.shape == (2, 42, 3)


def test_gradient_parity_train_mode(converted):
    tm, paths = converted
    jm, _ = _jax_model(paths["plain"])
    unit, normed = _images(4, seed=1)
    target = np.random.default_rng(2).uniform(0, 16, (4, 42, 3)).astype(np.float32)
    tm.train()
    tm.zero_grad()
    ref = tm(torch.from_numpy(unit).permute(0, 3, 1, 2))
    loss = torch.mean(torch.abs(ref["joints25d"] - torch.from_numpy(target)))
    loss.backward()
    jm.train()

    def f(m, x):
        return jnp.mean(jnp.abs(m(x).joints25d - target))

    jl, grads = nnx.jit(nnx.value_and_grad(f))(jm, jnp.asarray(normed))
    _close(jl, loss.item(), "loss")
    p = dict(tm.named_parameters())
    pairs = {"pose_reg.backbone.conv1.weight": grads.backbone.conv1.kernel,
             "pose_reg.merge_layer.inc.double_conv.0.weight": grads["merge"]["inc"]["conv1"]["conv"]["kernel"],
             "pose_reg.hand_segm.segm_head.segm_net.double_conv.3.bias": grads.segm_conv2.bias,
             "pose_reg.conv_hm.weight": grads.conv_hm.conv.kernel,
             "pose_reg.conv_segm_feat.2.bias": grads.segm_feat2.bias}
    for key, g in pairs.items():
        tg = p[key].grad.numpy()
        g = np.asarray(g[...])
        if g.ndim == 4:
            g = np.transpose(g, (3, 2, 0, 1))
        np.testing.assert_allclose(g, tg, rtol=2e-3, atol=2e-4 * np.abs(tg).max(), err_msg=key)


def test_lightning_fp16_layout(converted):
    _, paths = converted
    meta = read_meta(paths["lightning"])
    assert meta["epoch"] == 3 and meta["converter"] == "handjax.convert.digit.convert_digit"
    report = open(os.path.join(paths["lightning"], "conversion_report.txt")).read()
    assert "cast" in report and "num_batches_tracked" in report and "BatchNorm update counter" in report
    a, _ = _jax_model(paths["plain"])
    b, _ = _jax_model(paths["lightning"])
    ka = np.asarray(a.merge.up1.conv1.conv.kernel[...])
    kb = np.asarray(b.merge.up1.conv1.conv.kernel[...])
    np.testing.assert_array_equal(kb, ka.astype(np.float16).astype(np.float32))


def test_bad_keys_are_named(tmp_path):
    sd = _torch_model().state_dict()
    cases = {
        "missing": {k: v for k, v in sd.items() if k != "pose_reg.conv_hm.bias"},
        "extra": dict(sd, **{"pose_reg.conv_extra.weight": torch.zeros(3)}),
        "shape": dict(sd, **{"pose_reg.hand_fc.2.bias": torch.zeros(5)}),
    }
    needles = {"missing": "conv_hm.bias", "extra": "conv_extra.weight", "shape": "hand_fc"}
    for name, bad in cases.items():
        src = tmp_path / f"{name}.pt"
        torch.save(bad, src)
        with pytest.raises(ConversionError, match=needles[name]):
            C.convert_digit(str(src), str(tmp_path / f"out_{name}"))
    torch.save({"backbone.conv1.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="pose_reg"):
        C.convert_digit(str(tmp_path / "foreign.pt"), str(tmp_path / "out_foreign"))


def test_released_key_list_and_paper_model():
    """The reference's W32 state dict = DIGIT's 1903 entries, and they all map onto recipe=paper's model."""
    rows = [line.rstrip("\n").split("\t") for line in open(TSV) if not line.startswith("#")]
    released = {k: tuple(int(x) for x in s.strip("()").split(",") if x.strip()) for k, s, _ in rows}
    ref = {("pose_reg." + k): tuple(v.shape) for k, v in Model().pose_reg.state_dict().items()}
    assert len(released) == C.RELEASED_ENTRIES and ref == released
    sd = {k[len("pose_reg."):]: np.zeros(s, np.float32) for k, s in released.items()}
    sizes = C.detect_sizes(sd)
    assert C._backbone_kw_overrides(sizes["backbone_kw"]) == {}
    from handjax.configs.digit import PAPER_SPEC
    assert sizes["spec"] == {k: tuple(v) if isinstance(v, tuple) else v for k, v in PAPER_SPEC.items()}
    model, _, report = C.digit_model_from_state_dict(sd)
    assert len(report.assigned) == 1903 - 309 and len(report.ignored) == 309
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == 40_711_475
