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
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m handjax.convert",
        description="Convert released PyTorch checkpoints into handjax model-only (Orbax) checkpoints. "
                    "torch is not needed; MANO buffers are never copied.",
    )
    sub = parser.add_subparsers(dest="system", required=True,
                                metavar="{tempclr,torchvision-resnet,idhandmesh,interwild,handobjectconsist,digit}")

    t = sub.add_parser(
        "tempclr", help="TempCLR release (FreiHAND ResNet-50 or HO3D ResNet-18 model)",
        description="Convert a TempCLR checkpoint into a handjax TempCLRModel checkpoint (hidden 1024-1024, 3 "
                    "stages; depth detected). Evaluate it with configs/eval_freihand.py (ResNet-50) or "
                    "configs/eval_ho3d.py (ResNet-18) as --config.eval.checkpoint=<out> together with "
                    "--config.mano.model_path=<your MANO_RIGHT.pkl> (required: the released regressors were "
                    "trained with the real MANO model), or fine-tune from its backbone with "
                    "--config.finetune.init_from=<out>.")
    t.add_argument("--checkpoint", required=True,
                   help="the checkpoint file (tempclr_freihand / tempclr_ho3d), its 'latest_checkpoint' text file, "
                        "or the 'checkpoints' folder holding that; a pointer whose path does not exist here (the "
                        "author's absolute path, or a relative one from another directory) falls back to the file "
                        "of that name beside it, with a note")
    t.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    r = sub.add_parser(
        "torchvision-resnet", help="torchvision ImageNet ResNet-18/34/50 weights (.pth)",
        description="Convert torchvision ResNet weights into a handjax ResNet checkpoint (fc dropped). Start "
                    "TempCLR's pretraining from ImageNet with --config.pretrain.init_from=<out> (upstream's "
                    "backbone.pretrained=True), or load it with "
                    "handjax.models.checkpoint.load_model(ResNet(depth, rngs=nnx.Rngs(0)), <out>).")
    r.add_argument("--checkpoint", required=True, help="torchvision state dict file, e.g. resnet50-0676ba61.pth")
    r.add_argument("--depth", type=int, choices=(18, 34, 50), default=None,
                   help="ResNet depth; detected from the keys when omitted (must agree when given)")
    r.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    i = sub.add_parser(
        "idhandmesh", help="IdHandMesh (identity-aware hand mesh) checkpoint_last.pt of a MANO-based model",
        description="Convert an IdHandMesh checkpoint (baseline, baseline + confidence branch, or identity-aware "
                    "model; detected from the keys) into a handjax IdHandMeshModel checkpoint. The MANO buffers "
                    "inside are never copied: MANO comes from your own file.")
    i.add_argument("--checkpoint", required=True, help="checkpoint_last.pt (torch.save of {'epoch', "
                                                       "'model_state_dict', 'optimizer_state_dict', ...})")
    i.add_argument("--kind", choices=("baseline", "confidence", "identity"), default=None,
                   help="the model the checkpoint must hold (detected from its keys when omitted)")
    i.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    w = sub.add_parser(
        "interwild", help="InterWild release snapshot_<epoch>.pth (facebookresearch/InterWild)",
        description="Convert an InterWild snapshot ({'epoch', 'network', 'optimizer'}, 'module.' prefixes) into a "
                    "handjax InterWildModel checkpoint; every tensor is used or ignored with a reason. Evaluate it "
                    "with --config configs/interwild.py:recipe=paper --config.stages=eval "
                    "--config.eval.checkpoint=<out> --config.mano.model_path=<folder of MANO_RIGHT/LEFT.pkl>.")
    w.add_argument("--checkpoint", required=True, help="snapshot_<epoch>.pth")
    w.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    h = sub.add_parser(
        "handobjectconsist", help="handobjectconsist release checkpoint_<epoch>.pth (hassony2/handobjectconsist)",
        description="Convert a handobjectconsist (libyana) checkpoint ({'epoch', 'network', 'state_dict', "
                    "'optimizer', 'scheduler'}; the pickled scheduler stays an inert placeholder) into a handjax "
                    "MeshRegNet checkpoint, the frozen FPHAB adaptor included; MANO buffers are never copied. "
                    "Evaluate it with --config configs/photometric.py:recipe=fphab --config.stages=eval "
                    "--config.eval.checkpoint=<out> --config.mano.model_path=<your MANO_RIGHT.pkl>.")
    h.add_argument("--checkpoint", required=True, help="checkpoint_<epoch>.pth (or checkpoint.pth / model_best.pth)")
    h.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    d = sub.add_parser(
        "digit", help="DIGIT release db7cba8c1.pt (zc-alexfan/digit-interacting) or a Lightning .ckpt of it",
        description="Convert DIGIT's released state dict (keys pose_reg.*, a leading 'model.' stripped; Lightning "
                    "checkpoints: their 'state_dict') into a handjax DigitModel checkpoint; all entries used, "
                    "num_batches_tracked ignored with the reason, fp16 cast to float32. Evaluate it with --config "
                    "configs/digit.py:recipe=paper --config.stages=eval --config.eval.checkpoint=<out>.")
    d.add_argument("--checkpoint", required=True, help="db7cba8c1.pt, or a Lightning .ckpt (last.ckpt)")
    d.add_argument("--out", required=True, help="output directory (new, empty, or an earlier handjax conversion)")

    for p in (t, r, i, w, h, d):
        p.add_argument("--brief", action="store_true", help="print counts only, not one line per tensor")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the converter CLI; returns the exit status (0 ok, 1 conversion error; 2 usage error via argparse)."""
    args = build_parser().parse_args(argv)
    # Conversion is host work: keep JAX off accelerators (no GPU memory grab) unless the user chose a platform.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from handjax.convert.tempclr import convert_tempclr, convert_torchvision_resnet

    try:
        if args.system == "tempclr":
            report = convert_tempclr(args.checkpoint, args.out)
        elif args.system == "idhandmesh":
            from handjax.convert.idhandmesh import convert_idhandmesh

            report = convert_idhandmesh(args.checkpoint, args.out, kind=args.kind)
        elif args.system == "handobjectconsist":
            from handjax.convert.handobjectconsist import convert_handobjectconsist

            report = convert_handobjectconsist(args.checkpoint, args.out)
        elif args.system == "digit":
            from handjax.convert.digit import convert_digit

            report = convert_digit(args.checkpoint, args.out)
        elif args.system == "interwild":
            from handjax.convert.interwild import convert_interwild

            report = convert_interwild(args.checkpoint, args.out)
        else:
            report = convert_torchvision_resnet(args.checkpoint, args.out, depth=args.depth)
    except (OSError, ValueError) as e:  # missing files, unreadable checkpoints, ConversionError (lists the keys)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary(per_tensor=not args.brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
