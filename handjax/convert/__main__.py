"""Command line: convert released PyTorch checkpoints into handjax model-only checkpoints (no torch needed).

  python -m handjax.convert tempclr --checkpoint <TempCLR_release>/FreiHAND_model/checkpoints --out <dir>
  python -m handjax.convert torchvision-resnet --checkpoint resnet50-0676ba61.pth [--depth 50] --out <dir>
  python -m handjax.convert idhandmesh --checkpoint checkpoint_last.pt --out <dir> [--kind baseline]
  python -m handjax.convert interwild --checkpoint snapshot_6.pth --out <dir>
  python -m handjax.convert handobjectconsist --checkpoint releasemodels/fphab/.../checkpoint_200.pth --out <dir>
  python -m handjax.convert digit --checkpoint db7cba8c1.pt --out <dir>

Checkpoints are read with a restricted unpickler: code in a malicious pickle
is never run (such objects become inert placeholders and are listed). The
printed report accounts for every tensor: used (source -> target) or ignored
with a reason. Exit status 0 on success, 1 with a one-line error otherwise.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence


OUT_HELP = "output directory (new, empty, or an earlier handjax conversion)"
# subcommand -> (module, function, extra flags passed as keyword arguments)
CONVERTERS = {
    "tempclr": ("handjax.convert.tempclr", "convert_tempclr", ()),
    "torchvision-resnet": ("handjax.convert.tempclr", "convert_torchvision_resnet", ("depth",)),
    "idhandmesh": ("handjax.convert.idhandmesh", "convert_idhandmesh", ("kind",)),
    "interwild": ("handjax.convert.interwild", "convert_interwild", ()),
    "handobjectconsist": ("handjax.convert.handobjectconsist", "convert_handobjectconsist", ()),
    "digit": ("handjax.convert.digit", "convert_digit", ()),
}


def _command(sub, name: str, checkpoint_help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand with the flags every converter has: --checkpoint, --out, --brief."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument("--checkpoint", required=True, help=checkpoint_help)
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--brief", action="store_true", help="print counts only, not one line per tensor")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handjax.convert",
        description="Convert released PyTorch checkpoints into handjax model-only (Orbax) checkpoints. "
                    "torch is not needed; MANO buffers are never copied.",
    )
    sub = parser.add_subparsers(dest="system", required=True, metavar="{" + ",".join(CONVERTERS) + "}")

    _command(
        sub, "tempclr", "the checkpoint file (tempclr_freihand / tempclr_ho3d), its 'latest_checkpoint' text file, "
                        "or the 'checkpoints' folder holding that; a pointer whose path does not exist here (the "
                        "author's absolute path, or a relative one from another directory) falls back to the file "
                        "of that name beside it, with a note",
        help="TempCLR release (FreiHAND ResNet-50 or HO3D ResNet-18 model)",
        description="Convert a TempCLR checkpoint into a handjax TempCLRModel checkpoint (hidden 1024-1024, 3 "
                    "stages; depth detected). Evaluate it with configs/eval_freihand.py (ResNet-50) or "
                    "configs/eval_ho3d.py (ResNet-18) as --config.eval.checkpoint=<out> together with "
                    "--config.mano.model_path=<your MANO_RIGHT.pkl> (required: the released regressors were "
                    "trained with the real MANO model), or fine-tune from its backbone with "
                    "--config.finetune.init_from=<out>.")

    r = _command(
        sub, "torchvision-resnet", "torchvision state dict file, e.g. resnet50-0676ba61.pth",
        help="torchvision ImageNet ResNet-18/34/50 weights (.pth)",
        description="Convert torchvision ResNet weights into a handjax ResNet checkpoint (fc dropped). Start "
                    "TempCLR's pretraining from ImageNet with --config.pretrain.init_from=<out> (upstream's "
                    "backbone.pretrained=True), or load it with "
                    "handjax.models.checkpoint.load_model(ResNet(depth, rngs=nnx.Rngs(0)), <out>).")
    r.add_argument("--depth", type=int, choices=(18, 34, 50), default=None,
                   help="ResNet depth; detected from the keys when omitted (must agree when given)")

    i = _command(
        sub, "idhandmesh", "checkpoint_last.pt (torch.save of {'epoch', 'model_state_dict', "
                           "'optimizer_state_dict', ...})",
        help="IdHandMesh (identity-aware hand mesh) checkpoint_last.pt of a MANO-based model",
        description="Convert an IdHandMesh checkpoint (baseline, baseline + confidence branch, or identity-aware "
                    "model; detected from the keys) into a handjax IdHandMeshModel checkpoint. The MANO buffers "
                    "inside are never copied: MANO comes from your own file.")
    i.add_argument("--kind", choices=("baseline", "confidence", "identity"), default=None,
                   help="the model the checkpoint must hold (detected from its keys when omitted)")

    _command(
        sub, "interwild", "snapshot_<epoch>.pth",
        help="InterWild release snapshot_<epoch>.pth (facebookresearch/InterWild)",
        description="Convert an InterWild snapshot ({'epoch', 'network', 'optimizer'}, 'module.' prefixes) into a "
                    "handjax InterWildModel checkpoint; every tensor is used or ignored with a reason. Evaluate it "
                    "with --config configs/interwild.py:recipe=paper --config.stages=eval "
                    "--config.eval.checkpoint=<out> --config.mano.model_path=<folder of MANO_RIGHT/LEFT.pkl>.")

    _command(
        sub, "handobjectconsist", "checkpoint_<epoch>.pth (or checkpoint.pth / model_best.pth)",
        help="handobjectconsist release checkpoint_<epoch>.pth (hassony2/handobjectconsist)",
        description="Convert a handobjectconsist (libyana) checkpoint ({'epoch', 'network', 'state_dict', "
                    "'optimizer', 'scheduler'}; the pickled scheduler stays an inert placeholder) into a handjax "
                    "MeshRegNet checkpoint, the frozen FPHAB adaptor included; MANO buffers are never copied. "
                    "Evaluate it with --config configs/photometric.py:recipe=fphab --config.stages=eval "
                    "--config.eval.checkpoint=<out> --config.mano.model_path=<your MANO_RIGHT.pkl>.")

    _command(
        sub, "digit", "db7cba8c1.pt, or a Lightning .ckpt (last.ckpt)",
        help="DIGIT release db7cba8c1.pt (zc-alexfan/digit-interacting) or a Lightning .ckpt of it",
        description="Convert DIGIT's released state dict (keys pose_reg.*, a leading 'model.' stripped; Lightning "
                    "checkpoints: their 'state_dict') into a handjax DigitModel checkpoint; all entries used, "
                    "num_batches_tracked ignored with the reason, fp16 cast to float32. Evaluate it with --config "
                    "configs/digit.py:recipe=paper --config.stages=eval --config.eval.checkpoint=<out>.")

    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the converter CLI; returns the exit status (0 ok, 1 conversion error; 2 usage error via argparse)."""
    args = build_parser().parse_args(argv)
    # Conversion is host work: keep JAX off accelerators (no GPU memory grab) unless the user chose a platform.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    module, function, extra = CONVERTERS[args.system]
    convert = getattr(importlib.import_module(module), function)
    try:
        report = convert(args.checkpoint, args.out, **{k: getattr(args, k) for k in extra})
    except (OSError, ValueError) as e:  # missing files, unreadable checkpoints, ConversionError (lists the keys)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary(per_tensor=not args.brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
