"""Named MANO output conventions, as data, each with its source.

Canonical 21-joint layout used inside handjax ("mano21"): the 16 MANO tree
joints (wrist, index1-3, middle1-3, pinky1-3, ring1-3, thumb1-3) followed by
the five fingertips in the order thumb, index, middle, ring, pinky. A
convention picks the tip vertices and a gather order from that layout, the
units and the centring behaviour.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

TIP_FINGERS = ("thumb", "index", "middle", "ring", "pinky")
MANO21_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3", "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
    "thumb_tip", "index_tip", "middle_tip", "ring_tip", "pinky_tip",
)

# OpenPose / FreiHAND / manopth / HaMeR order: wrist, then per finger (thumb..pinky) base -> tip.
OPENPOSE_ORDER = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# TempCLR model output: MANO tree joints, then tips in its yaml order index, middle, pinky, ring, thumb.
TEMPCLR_ORDER = tuple(range(16)) + (17, 18, 20, 19, 16)
# HO3D: MANO tree joints, then tips thumb, index, middle, ring, pinky (= mano21).
HO3D_ORDER = tuple(range(21))
# InterHand2.6M (per hand, skeleton.txt): per finger tip -> base, thumb first, wrist last.
IH26M_ORDER = (16, 15, 14, 13, 17, 3, 2, 1, 18, 6, 5, 4, 19, 12, 11, 10, 20, 9, 8, 7, 0)


@dataclasses.dataclass(frozen=True)
class Convention:
    """How a codebase turns MANO into 21 output joints.

    tip_ids: side -> vertex ids of the tips in the order thumb, index, middle, ring, pinky.
    joint_order: gather indices into the canonical mano21 layout.
    units: "m" or "mm" (applied to vertices and joints).
    center_idx: joint (in output order) subtracted from vertices and joints, or None.
    center_only_without_transl: manopth semantics: centre only when the
      translation is zero/absent (per sample here; manopth tests the whole batch).
    """

    name: str
    tip_ids: Dict[str, Tuple[int, ...]]
    joint_order: Tuple[int, ...]
    units: str
    center_idx: Optional[int]
    center_only_without_transl: bool
    source: str

    def tips(self, side: str) -> Tuple[int, ...]:
        return self.tip_ids.get(side, self.tip_ids["right"])

    @property
    def joint_names(self) -> Tuple[str, ...]:
        return tuple(MANO21_NAMES[i] for i in self.joint_order)

    @property
    def unit_scale(self) -> float:
        return 1000.0 if self.units == "mm" else 1.0

    def replace(self, **kw) -> "Convention":
        return dataclasses.replace(self, **kw)


CONVENTIONS: Dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "manopth", {"right": (745, 317, 444, 556, 673), "left": (745, 317, 445, 556, 673)},
            OPENPOSE_ORDER, "mm", None, True,
            "hassony2/manopth manopth/manolayer.py (tips, reorder, *1000, center_idx only when th_trans is zero)"),
        Convention(
            "smplx", {"right": (744, 320, 443, 554, 671)}, OPENPOSE_ORDER, "m", None, False,
            "vchoutas/smplx smplx/vertex_ids.py 'mano'; order of HaMeR mano_wrapper.py (mano_to_openpose)"),
        Convention(
            "tempclr", {"right": (720, 318, 443, 554, 671), "left": (744, 318, 443, 554, 671)},
            TEMPCLR_ORDER, "m", None, False,
            "eth-ait/tempclr mano_right_extra_joints.yaml (face + one-hot barycentric, resolved on MANO faces)"),
        Convention(
            "freihand", {"right": (744, 320, 443, 555, 672)}, OPENPOSE_ORDER, "m", None, False,
            "lmb-freiburg/freihand utils/mano_utils.py tips {4:744, 8:320, 12:443, 16:555, 20:672}"),
        Convention(
            "ho3d", {"right": (744, 320, 443, 554, 671)}, HO3D_ORDER, "m", None, False,
            "shreyashampali/ho3d order (MANO tree joints then tips thumb..pinky); tips as smplx"),
        Convention(
            "ih26m", {"right": (744, 320, 443, 554, 671)}, IH26M_ORDER, "m", None, False,
            "facebookresearch/InterHand2.6M annotations/skeleton.txt order; InterHand's own tip regressor "
            "(J_regressor_mano_ih26m.npy) is not reproduced, smplx tips are used"),
    )
}


def get_convention(convention) -> Convention:
    if isinstance(convention, Convention):
        return convention
    try:
        return CONVENTIONS[convention]
    except KeyError:
        raise ValueError(f"unknown MANO convention {convention!r}; known: {sorted(CONVENTIONS)}") from None


def joint_remap(src, dst) -> Tuple[int, ...]:
    """Gather indices taking joints in ``src``'s order to ``dst``'s order, by joint name.

    Like TempCLR's ``map_keypoints``: tips are matched by name even if the two
    conventions use different tip vertices.
    """
    src_names = get_convention(src).joint_names
    return tuple(src_names.index(n) for n in get_convention(dst).joint_names)
