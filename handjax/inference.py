"""Inference on your own images: the library behind ``python -m handjax.predict``.

Pipeline (one function per step, numpy on the host; the network runs in ONE jitted forward):

1. :func:`list_images`: folders (their ``.jpg/.jpeg/.png`` files), glob patterns and files.
2. :func:`load_boxes`: the optional boxes file (format below); without one, every image is
   one right hand whose crop is the whole image.
3. :func:`read_image`: decode (EXIF orientation applied) to uint8 RGB; an unreadable or truncated
   file raises :class:`ImageError` naming it.
4. :func:`crop_affine` / :func:`make_crop`: a square crop around each box, resized to the
   predictor's input size and ImageNet-normalised exactly as the datasets' crops
   (``data_pipelines.transforms``). The crop affine ``A`` maps ORIGINAL pixels to crop pixels
   (pixel centres at integer coordinates). A left hand for a right-hand model is cut as a
   mirrored crop (``A`` includes x -> -x), predicted as a right hand and mirrored back.
5. :class:`BatchedForward`: crops in fixed-size batches (the last one padded) through one
   jitted ``predictor.predict``.
6. :func:`image_camera` / :func:`camera_space`: the model's crop-pixel 3x4 camera mapped to
   ORIGINAL image pixels (``A^-1 P diag(M, 1)``, M the 3-D mirror for mirrored crops), then
   made a pinhole camera ``K`` with one translation ``t`` per hand (an affine, weak-perspective
   camera is converted SPIN-style by :func:`handjax.geometry.affine_to_perspective` with
   focal length ``f`` in original pixels, default ``max(H, W)``, and principal point the image
   centre ``((W-1)/2, (H-1)/2)``). Exported 3-D joints / vertices are ``X + t`` (camera frame,
   OpenCV axes, metres) and the exported 2-D joints are exactly their projection with ``K``.
   For a weak-perspective model these 2-D joints are the perspective re-projection, which
   differs slightly from the network's own weak-perspective 2-D joints (points off the hand's
   mean depth move by a factor ``tz / (tz + dz)``).
7. Writers: :func:`write_obj`, :func:`image_record` (JSON), :func:`render_overlay` (PNG, drawn with
   :class:`Canvas`), a system's ``Predictor.extra_images`` (further PNGs, listed in the JSON's
   ``files``) and :func:`write_index_html`; :func:`run` ties everything together.

Boxes file (``--boxes``), JSON: image file name (or the path as given) -> list of hands::

    {"photo1.jpg": [{"box": [x0, y0, x1, y1], "side": "right"},
                    {"box": [410, 80, 560, 250], "side": "left"}],
     "photo2.png": []}

``box``: the hand's bounding box in original pixels (x right, y down); the crop is a square of
side ``bbox_pad * max(x1 - x0, y1 - y0)`` (default 1.5, the crop of the built-in datasets
around their hand boxes) centred on the box. ``side``: ``"right"`` or ``"left"``. An empty
list means no hand; an image without an entry is one right hand cropped from the whole image
(a square around the image centre covering it). Systems that find hands themselves
(``Predictor.finds_boxes``) get the whole image and ignore boxes.
"""
from __future__ import annotations

import dataclasses
import glob
import html
import json
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SIDES = ("right", "left")
DEFAULT_BBOX_PAD = 1.5  # crop side / longer box side: the built-in datasets' crop around their hand boxes
MAX_RENDER_SIDE = 1024  # overlay meshes larger than this (pixels) are rendered at reduced size and upsampled
_MIRROR3 = np.diag([-1.0, 1.0, 1.0])
HAND_COLORS = {"right": (0.55, 0.65, 0.9), "left": (0.55, 0.9, 0.5)}
EXTRAS = "extras"  # key of a predictor's non-hand outputs (Predictor.postprocess)


class ImageError(Exception):
    """An input image that cannot be used (unreadable, truncated, or its boxes do not fit it)."""


# ----------------------------------------------------------------------------- inputs
def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files from folders (non-recursive, sorted), glob patterns (sorted) and file paths.

    A folder contributes its ``.jpg/.jpeg/.png`` files; a pattern its matches (any extension:
    a matched non-image file is reported as a failed image later, not skipped); a file itself.
    Raises ValueError naming an input that matches nothing, and two inputs whose output names
    (file names without extension) collide.
    """
    out: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise ValueError(f"--images {item}: the folder holds no {'/'.join(IMAGE_EXTENSIONS)} files")
        elif os.path.isfile(item):
            found = [item]
        elif any(c in item for c in "*?["):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise ValueError(f"--images {item}: the pattern matches no files")
        else:
            raise ValueError(f"--images {item}: no such file or folder")
        out.extend(found)
    seen: Dict[str, str] = {}
    unique, absolute = [], set()
    for path in out:
        if os.path.abspath(path) in absolute:
            continue
        absolute.add(os.path.abspath(path))
        name = output_name(path)
        if name in seen:
            raise ValueError(f"--images: {seen[name]} and {path} would write the same outputs ({name}.*); "
                             f"rename one or predict them separately")
        seen[name] = path
        unique.append(path)
    return unique


def output_name(path: str) -> str:
    """The stem of an image's output files: its file name without extension."""
    return os.path.splitext(os.path.basename(path))[0]


def read_image(path: str) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3), EXIF orientation applied.

    Raises :class:`ImageError` naming the file if it cannot be read or decoded completely
    (e.g. a truncated JPEG).
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode everything now: a truncated file fails here, not later
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot read the image ({e})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{path}: empty image")
    return rgb


@dataclasses.dataclass(frozen=True)
class HandBox:
    """One hand to predict: its box (x0, y0, x1, y1) in original pixels, or None for the whole image."""

    side: str = "right"
    box: Optional[Tuple[float, float, float, float]] = None


WHOLE_IMAGE = (HandBox("right", None),)


def load_boxes(path: str) -> Dict[str, Tuple[HandBox, ...]]:
    """Read and check a boxes file (format in the module docstring).

    Raises ValueError naming the file and the offending key (and what was expected).
    """
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except OSError as e:
        raise ValueError(f"--boxes {path}: cannot read the file ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--boxes {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--boxes {path}: expected an object mapping image names to lists of hands, "
                         f"got a JSON {type(raw).__name__}")
    table = {}
    for name, hands in raw.items():
        where = f"--boxes {path}: key {name!r}"
        if not isinstance(hands, list):
            raise ValueError(f"{where}: expected a list of hands ({{\"box\": [x0, y0, x1, y1], \"side\": "
                             f"\"right\"|\"left\"}}), got {json.dumps(hands)[:80]}")
        parsed = []
        for i, hand in enumerate(hands):
            at = f"{where}[{i}]"
            if not isinstance(hand, dict):
                raise ValueError(f"{at}: expected an object {{\"box\": [x0, y0, x1, y1], \"side\": ...}}, "
                                 f"got {json.dumps(hand)[:80]}")
            unknown = sorted(set(hand) - {"box", "side"})
            if unknown:
                raise ValueError(f"{at}: unknown key(s) {unknown}; allowed: 'box', 'side'")
            for key in ("box", "side"):
                if key not in hand:
                    raise ValueError(f"{at}: missing key {key!r}")
            side = hand["side"]
            if side not in SIDES:
                raise ValueError(f"{at}['side']: expected 'right' or 'left', got {json.dumps(side)}")
            box = hand["box"]
            ok = (isinstance(box, list) and len(box) == 4
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box))
            if not ok or not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"{at}['box']: expected [x0, y0, x1, y1] (pixels, x0 < x1, y0 < y1), "
                                 f"got {json.dumps(box)}")
            parsed.append(HandBox(side, tuple(float(v) for v in box)))
        table[name] = tuple(parsed)
    return table


def boxes_for(path: str, table: Optional[Mapping[str, Tuple[HandBox, ...]]]) -> Tuple[HandBox, ...]:
    """The hands of an image: its entry in ``table`` (by the path as given, or its file name),
    or one right hand over the whole image when there is no table or no entry."""
    if table is None:
        return WHOLE_IMAGE
    for key in (path, os.path.normpath(path), os.path.basename(path)):
        if key in table:
            return table[key]
    return WHOLE_IMAGE


def unused_box_keys(table: Mapping[str, Any], paths: Sequence[str]) -> List[str]:
    """Keys of the boxes file that name none of the input images."""
    names = set()
    for p in paths:
        names.update((p, os.path.normpath(p), os.path.basename(p)))
    return sorted(k for k in table if k not in names)


# ----------------------------------------------------------------------------- crops
def crop_window(box: Optional[Sequence[float]], image_hw: Tuple[int, int], bbox_pad: float
                ) -> Tuple[np.ndarray, float]:
    """(centre (2,), side) in original pixels of the square crop of a box.

    A box (x0, y0, x1, y1) gives centre ((x0+x1)/2, (y0+y1)/2) and side ``bbox_pad *
    max(x1-x0, y1-y0)`` (``data_pipelines.transforms.crop_box`` with source 'bbox'); no box
    gives the square around the image centre covering it: centre ((W-1)/2, (H-1)/2), side
    max(H, W) (source 'image', no padding).
    """
    from data_pipelines.transforms import crop_box

    h, w = image_hw
    if box is None:
        return crop_box({"image": np.zeros((h, w, 0))}, "image")
    centre, side = crop_box({"bbox": np.asarray(box, np.float64)}, "bbox")
    return centre, side * float(bbox_pad)


def crop_affine(centre: np.ndarray, side: float, out_size: int, mirror: bool) -> np.ndarray:
    """The 3x3 map original pixel -> crop pixel of a square window (centre, side) resized to
    ``out_size``; ``mirror`` flips the crop horizontally (x -> -x about the window centre)."""
    from data_pipelines.transforms import crop_camera

    # with K = I the crop camera's pixel map is the plain 2-D similarity of the window
    _, _, affine = crop_camera(np.eye(3), np.asarray(centre, np.float64), float(side), int(out_size), 0.0, mirror)
    return affine


def make_crop(image: np.ndarray, affine: np.ndarray, out_size: int) -> np.ndarray:
    """The ImageNet-normalised crop (S, S, 3) float32 of a uint8 image under ``affine`` (bilinear;
    outside the image is black), as the datasets' pipelines make them."""
    from data_pipelines.transforms import normalize, warp_image

    return normalize(warp_image(image, affine, int(out_size)).astype(np.float32) * np.float32(1.0 / 255.0))


# ----------------------------------------------------------------------------- the network
class BatchedForward:
    """``predictor.predict`` jitted once for batches of ``batch_size`` crops.

    ``__call__(crops (N, S, S, 3))`` runs ceil(N / batch_size) batches (the last one padded with
    zeros) and returns, per crop, ``{side: {field: numpy array without batch axis}}`` with the
    hand-output fields (joints, joints2d, camera, rotmats, betas, vertices, is_right) and
    ``convention``.
    """

    def __init__(self, predictor, batch_size: int):
        import jax
        from flax import nnx

        if batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.image_size = int(predictor.image_size)
        model = predictor.model
        if hasattr(model, "eval"):
            model.eval()  # BatchNorm running statistics
        graphdef, state = nnx.split(model)
        predict = predictor.predict

        @jax.jit
        def step(state, images):
            return predict(nnx.merge(graphdef, state), images)

        self._step = lambda images: step(state, images)
        self.compiled_batches = 0

    def __call__(self, crops: np.ndarray) -> List[Dict[str, Dict[str, Any]]]:
        import jax

        crops = np.asarray(crops, np.float32)
        n, b, s = len(crops), self.batch_size, self.image_size
        if crops.shape[1:] != (s, s, 3):
            raise ValueError(f"crops must be (N, {s}, {s}, 3), got {crops.shape}")
        results: List[Dict[str, Dict[str, Any]]] = []
        for start in range(0, n, b):
            chunk = crops[start:start + b]
            m = len(chunk)
            if m < b:
                chunk = np.concatenate([chunk, np.zeros((b - m,) + chunk.shape[1:], np.float32)])
            out = jax.device_get(self._step(chunk))
            self.compiled_batches += 1
            for i in range(m):
                results.append({side: _hand_fields(h, i) for side, h in out.items() if side != EXTRAS})
                if EXTRAS in out:  # a system's per-crop extra arrays (Predictor.postprocess reads them)
                    results[-1][EXTRAS] = {k: np.asarray(v[i]) for k, v in out[EXTRAS].items()}
        return results


def _hand_fields(hand, i: int) -> Dict[str, Any]:
    fields = {}
    for f in ("joints", "joints2d", "camera", "rotmats", "betas", "vertices", "is_right"):
        v = getattr(hand, f)
        fields[f] = None if v is None else np.asarray(v[i], np.float64 if f != "is_right" else bool)
    fields["convention"] = hand.convention
    return fields


# ----------------------------------------------------------------------------- cameras
def image_camera(camera: np.ndarray, affine: np.ndarray, mirrored: bool) -> np.ndarray:
    """The model's crop-pixel 3x4 camera as a camera of ORIGINAL pixels for the output hand.

    ``A^-1 P`` maps through the inverse crop affine; for a mirrored crop the output hand is
    the mirror ``M X`` of the predicted one, so ``A^-1 P diag(M, 1)`` applies to it:
    ``project(P_img, M X) == A^-1 (project(P, X))``. Returns (3, 4).
    """
    p = np.linalg.solve(np.asarray(affine, np.float64), np.asarray(camera, np.float64))
    if mirrored:
        p = p @ np.diag([-1.0, 1.0, 1.0, 1.0])
    return p


def is_affine_camera(P: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether a 3x4 camera is affine (last row (0, 0, 0, w))."""
    P = np.asarray(P, np.float64)
    return bool(np.all(np.abs(P[2, :3]) <= tol * max(1.0, np.abs(P).max())))


def camera_space(P: np.ndarray, focal: float, principal: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """A 3x4 camera of original pixels as (K (3, 3), t (3,)) with ``project(K, X + t) ~ project(P, X)``.

    Affine (weak-perspective) P = [[a, 0, 0, bx], [0, a, 0, by], [0, 0, 0, 1]]: SPIN-style
    (:func:`handjax.geometry.affine_to_perspective`): K = [[f, 0, cx], [0, f, cy], [0, 0, 1]],
    t = ((b - c) / a, f / a); exact for points at the hand origin's depth. Pinhole P = K' [I | t']:
    K = K' (``focal`` / ``principal`` unused), t = t'. Raises ValueError for an affine camera
    with different x / y scales, skew or rotation (not a weak-perspective camera).
    """
    from handjax.geometry import affine_to_perspective

    P = np.asarray(P, np.float64)
    if is_affine_camera(P):
        P = P / P[2, 3]
        a = P[0, 0]
        lin = P[:2, :3]
        if abs(a) < 1e-12 or not np.allclose(lin, np.array([[a, 0, 0], [0, a, 0]]), rtol=1e-6, atol=1e-9 * abs(a)):
            raise ValueError(f"camera {P[:2].tolist()} is not a weak-perspective camera (isotropic, no rotation)")
        K, t = affine_to_perspective(P, np.float64(focal), np.asarray(principal, np.float64))
        return np.asarray(K, np.float64), np.asarray(t, np.float64)
    K = P[:, :3]
    t = np.linalg.solve(K, P[:, 3])
    return K, t


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (float64) of (N, 3) camera-frame points -> (N, 2) pixels."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[:, :2] / p[:, 2:3]


# ----------------------------------------------------------------------------- one hand
@dataclasses.dataclass
class HandResult:
    """One predicted hand in the ORIGINAL image's camera frame.

    vertices (V, 3) / joints3d (J, 3): camera frame (OpenCV axes), metres; joints2d (J, 2):
    original pixels, ``project(K, joints3d)``; faces (F, 3) outward-facing for this side;
    pose (48,): axis-angle, global orientation then 15 finger rotations, absolute
    (MANO ``flat_hand_mean=True``), for the MANO model of ``side``; transl (3,) = t.
    """

    side: str
    box: Optional[Tuple[float, ...]]
    crop_centre: np.ndarray
    crop_side: float
    crop_affine: np.ndarray
    mirrored: bool
    model_camera: np.ndarray
    image_camera: np.ndarray
    K: np.ndarray
    transl: np.ndarray
    vertices: Optional[np.ndarray]
    faces: Optional[np.ndarray]
    joints3d: np.ndarray
    joints2d: np.ndarray
    pose: np.ndarray
    betas: np.ndarray
    convention: str


def hand_result(fields: Mapping[str, Any], hand: HandBox, centre, side_px: float, affine: np.ndarray,
                mirrored: bool, faces: Optional[np.ndarray], focal: float, principal) -> HandResult:
    """A model output (one hand of one crop, :class:`BatchedForward` fields) in the original image.

    Mirrored crops: 3-D x -> -x, rotations ``M R M`` (``handjax.mano.mirror_rotmats``), faces with
    flipped winding; the camera through :func:`image_camera`.
    """
    from handjax.geometry import matrix_to_axis_angle

    joints = np.asarray(fields["joints"], np.float64)
    verts = fields.get("vertices")
    verts = None if verts is None else np.asarray(verts, np.float64)
    rotmats = np.asarray(fields["rotmats"], np.float64)
    if mirrored:
        joints = joints @ _MIRROR3
        verts = None if verts is None else verts @ _MIRROR3
        rotmats = _MIRROR3 @ rotmats @ _MIRROR3
        faces = None if faces is None else np.asarray(faces)[:, ::-1]
    P = image_camera(fields["camera"], affine, mirrored)
    K, t = camera_space(P, focal, principal)
    joints3d = joints + t
    pose = np.asarray(matrix_to_axis_angle(rotmats), np.float64).reshape(-1)
    return HandResult(
        side=hand.side, box=hand.box, crop_centre=np.asarray(centre, np.float64), crop_side=float(side_px),
        crop_affine=np.asarray(affine, np.float64), mirrored=mirrored,
        model_camera=np.asarray(fields["camera"], np.float64), image_camera=P, K=K, transl=t,
        vertices=None if verts is None else verts + t, faces=None if faces is None else np.ascontiguousarray(faces),
        joints3d=joints3d, joints2d=project(joints3d, K), pose=pose,
        betas=np.asarray(fields["betas"], np.float64), convention=str(fields["convention"]))


# ----------------------------------------------------------------------------- writers
def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray, comment: str = "") -> None:
    """Wavefront OBJ: ``v x y z`` lines then ``f i j k`` lines (1-based)."""
    lines = [f"# {c}" for c in comment.splitlines()] if comment else []
    lines += ["v {:.6f} {:.6f} {:.6f}".format(*v) for v in np.asarray(vertices, np.float64)]
    lines += ["f {} {} {}".format(*(f + 1)) for f in np.asarray(faces, np.int64)]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def dumps_compact(obj) -> str:
    """JSON with one key per line but every list of numbers on one line (readable, diff-friendly)."""
    text = json.dumps(obj, indent=1)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)


def _round(x, digits: int = 6):
    return np.round(np.asarray(x, np.float64), digits).tolist()


def hand_record(hand: HandResult, mesh_file: Optional[str]) -> dict:
    """The JSON entry of one hand (see the README's "Predict on your own images")."""
    from handjax.mano import get_convention

    try:
        names = list(get_convention(hand.convention).joint_names)
    except ValueError:
        names = None
    return {
        "side": hand.side,
        "is_right": hand.side == "right",
        "box": None if hand.box is None else list(hand.box),
        "crop": {"centre": _round(hand.crop_centre, 3), "side": round(hand.crop_side, 3),
                 "affine": _round(hand.crop_affine[:2], 8), "mirrored": hand.mirrored},
        "mano": {"global_orient": _round(hand.pose[:3]), "hand_pose": _round(hand.pose[3:]),
                 "pose": _round(hand.pose), "betas": _round(hand.betas), "transl": _round(hand.transl),
                 "flat_hand_mean": True},
        "camera": {"K": _round(hand.K), "translation": _round(hand.transl),
                   "focal_length": round(float(hand.K[0, 0]), 6),
                   "principal_point": _round(hand.K[:2, 2]),
                   "model_camera": _round(hand.model_camera, 8), "image_camera": _round(hand.image_camera, 8)},
        "joint_convention": hand.convention,
        "joint_names": names,
        "joints3d": _round(hand.joints3d),
        "joints2d": _round(hand.joints2d, 4),
        "mesh": mesh_file,
    }


def image_record(path: str, image_hw: Tuple[int, int], hands: Sequence[HandResult], mesh_files: Sequence,
                 meta: Mapping[str, Any]) -> dict:
    """The ``<name>.json`` of one image: the image, what predicted it, and its hands."""
    return {"image": os.path.basename(path), "image_path": os.path.abspath(path),
            "image_size": {"height": int(image_hw[0]), "width": int(image_hw[1])},
            **dict(meta), "hands": [hand_record(h, m) for h, m in zip(hands, mesh_files)]}


def mesh_file_names(name: str, hands: Sequence[HandResult]) -> List[str]:
    """``<name>_<side>.obj``; a further hand of the same side gets ``<name>_<side>_<k>.obj`` (k = 2, 3, ...)."""
    counts: Dict[str, int] = {}
    out = []
    for h in hands:
        counts[h.side] = counts.get(h.side, 0) + 1
        k = counts[h.side]
        out.append(f"{name}_{h.side}.obj" if k == 1 else f"{name}_{h.side}_{k}.obj")
    return out


def render_overlay(image: np.ndarray, hands: Sequence[HandResult], zoom: int = 1,
                   max_render_side: int = MAX_RENDER_SIDE) -> np.ndarray:
    """The meshes rendered (``handjax.render``, Lambertian, two-sided) over the image, then each
    hand's 2-D skeleton (its joints remapped from their convention to OpenPose order, as
    ``draw_skeleton`` expects; a convention unknown to ``handjax.mano`` draws no skeleton).
    ``zoom`` > 1 enlarges small images (nearest neighbour) and renders at that resolution.
    Meshes are composited per pixel by depth (the nearer surface in front, :meth:`Canvas.meshes`);
    skeletons are drawn far to near. Returns uint8 (zoom H, zoom W, 3).

    Each mesh is rendered only over its projected bounding box (sizes rounded up to 32 pixels
    so that few shapes compile), at reduced resolution when that box exceeds ``max_render_side``.
    """
    canvas = Canvas(image, zoom, max_render_side)
    return canvas.skeletons(hands, canvas.meshes(hands))


class Canvas:
    """Drawing over one original image at an integer display zoom (nearest-neighbour enlargement).

    Original pixel ``u`` (pixel centres at integers) is display pixel ``(u + 0.5) zoom - 0.5``.
    Used by :func:`render_overlay` and handed to ``Predictor.extra_images`` (``PredictionView.canvas``).
    """

    def __init__(self, image: np.ndarray, zoom: int = 1, max_render_side: int = MAX_RENDER_SIDE):
        zoom = int(zoom)
        if zoom < 1:
            raise ValueError(f"--overlay_zoom must be >= 1, got {zoom}")
        self.image = np.asarray(image, np.uint8)
        self.zoom = zoom
        self.max_render_side = int(max_render_side)

    def base(self) -> np.ndarray:
        """The image at display size (zoom H, zoom W, 3) uint8."""
        out = self.image
        if self.zoom > 1:
            out = out.repeat(self.zoom, axis=0).repeat(self.zoom, axis=1)
        return np.ascontiguousarray(out)

    def to_display(self, uv) -> np.ndarray:
        """Original pixel coordinates (..., 2) -> display pixel coordinates."""
        return (np.asarray(uv, np.float64) + 0.5) * self.zoom - 0.5

    def display_K(self, K: np.ndarray) -> np.ndarray:
        """A pinhole K of original pixels as the K of display pixels."""
        Kd = np.asarray(K, np.float64).copy()
        Kd[:2] *= self.zoom
        Kd[:2, 2] = self.to_display(np.asarray(K, np.float64)[:2, 2])
        return Kd

    def meshes(self, hands: Sequence[HandResult], image: Optional[np.ndarray] = None,
               depth_offsets: Optional[Sequence[float]] = None, alpha: float = 0.7) -> np.ndarray:
        """The hands' meshes over ``image`` (default :meth:`base`), z-composited per pixel.

        Each hand is rendered with its own K; at a pixel covered by several hands the one with the
        smallest ``depth + depth_offsets[i]`` (camera z in metres plus an offset per hand, default 0;
        e.g. placing hands rendered in different cameras at a common relative depth) is shown.
        Hands without a mesh are skipped. Returns uint8 (zoom H, zoom W, 3).
        """
        from handjax.eval.visualize import overlay

        out = self.base() if image is None else np.asarray(image, np.uint8)
        H, W = out.shape[:2]
        offsets = [0.0] * len(hands) if depth_offsets is None else [float(d) for d in depth_offsets]
        if len(offsets) != len(hands):
            raise ValueError(f"depth_offsets: expected one per hand ({len(hands)}), got {len(offsets)}")
        best = np.full((H, W), np.inf)
        layer = np.zeros((H, W, 3), np.float32)
        for h, offset in zip(hands, offsets):
            if h.vertices is None or h.faces is None:
                continue
            patch = _render_patch(h.vertices, h.faces, self.display_K(h.K), (H, W),
                                  HAND_COLORS.get(h.side, HAND_COLORS["right"]), self.max_render_side)
            if patch is None:
                continue
            (y0, y1, x0, x1), rgb, mask, depth = patch
            region = best[y0:y1, x0:x1]
            nearer = mask & (depth + offset < region)
            region[nearer] = depth[nearer] + offset
            layer[y0:y1, x0:x1][nearer] = rgb[nearer]
        return overlay(out, layer, np.isfinite(best), alpha)

    def skeletons(self, hands: Sequence[HandResult], image: Optional[np.ndarray] = None) -> np.ndarray:
        """Each hand's 2-D skeleton (OpenPose order; a convention unknown to ``handjax.mano`` or a
        joint count other than 21 draws none) over ``image`` (default :meth:`base`), far to near."""
        from handjax.eval.visualize import draw_skeleton

        out = self.base() if image is None else np.asarray(image, np.uint8)
        radius = max(1, int(round(max(out.shape[:2]) / 256)))
        for h in sorted(hands, key=lambda h: -float(np.mean(np.asarray(h.joints3d)[:, 2]))):
            order = _openpose_order(h.convention)
            if order is not None and len(h.joints2d) == 21:
                out = draw_skeleton(out, self.to_display(h.joints2d)[np.asarray(order)], radius=radius)
        return out


def _render_patch(verts: np.ndarray, faces: np.ndarray, K: np.ndarray, hw: Tuple[int, int], color, max_side: int):
    """One mesh rendered over its projected box: ((y0, y1, x0, x1), rgb (h, w, 3) float, mask (h, w) bool,
    depth (h, w) camera z) in the pixels of an (H, W) image with camera K, or None if nothing is visible."""
    from handjax import render

    H, W = hw
    if np.any(verts[:, 2] <= 1e-3):
        return None  # behind or at the camera: nothing sensible to draw
    uv = project(verts, K)
    x0, y0 = np.floor(uv.min(0)).astype(int) - 2
    x1, y1 = np.ceil(uv.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 <= x0 or y1 <= y0:
        return None
    w, h = x1 - x0, y1 - y0
    scale = min(1.0, max_side / max(w, h))
    rw, rh = (int(-(-max(1, round(v * scale)) // 32) * 32) for v in (w, h))
    Kw = K.copy()
    Kw[:2, 2] -= (x0, y0)
    Kw[:2, 2] = (Kw[:2, 2] + 0.5) * scale - 0.5
    Kw[:2, :2] *= scale
    colors = np.tile(np.asarray(color, np.float32), (len(verts), 1))
    out = render.render_mesh_batch(np.asarray(verts, np.float32)[None], np.asarray(faces, np.int32),
                                   np.asarray(Kw, np.float32)[None], (rh, rw), vertex_colors=colors)
    rgb, mask = np.asarray(out.rgb[0])[..., :3], np.asarray(out.mask[0])
    depth = np.asarray(out.depth[0], np.float64)
    if scale < 1.0:
        sh, sw = int(round(h * scale)), int(round(w * scale))
        rgb = np.asarray(Image.fromarray((np.clip(rgb[:sh, :sw], 0, 1) * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
        mask = np.asarray(Image.fromarray(mask[:sh, :sw].astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.NEAREST)) > 127
        depth = np.asarray(Image.fromarray(np.ascontiguousarray(depth[:sh, :sw], np.float32)).resize(
            (w, h), Image.Resampling.NEAREST), np.float64)
    else:
        rgb, mask, depth = rgb[:h, :w], mask[:h, :w], depth[:h, :w]
    return (y0, y1, x0, x1), rgb, mask, depth


def write_index_html(path: str, entries: Sequence[Mapping[str, Any]], failed: Mapping[str, str],
                     title: str = "handjax predictions") -> None:
    """A contact sheet: each image's overlay with links to its JSON and meshes, thumbnails of its
    further images (``Predictor.extra_images``); failed images listed.

    entries: {"name", "overlay", "json", "meshes": [...], "hands": "right, left", "extras": {label: file}}
    per image ("extras" optional).
    """
    e = html.escape
    cards = []
    for ent in entries:
        links = " ".join(f'<a href="{e(m)}">{e(m)}</a>' for m in [ent["json"]] + list(ent["meshes"]))
        extras = "".join(f'<a href="{e(f)}" title="{e(label)}"><img class="extra" src="{e(f)}" alt="{e(label)}"></a>'
                         for label, f in (ent.get("extras") or {}).items())
        cards.append(f'<figure><a href="{e(ent["overlay"])}"><img src="{e(ent["overlay"])}" '
                     f'alt="{e(ent["name"])}"></a>{f"<br>{extras}" if extras else ""}'
                     f'<figcaption><b>{e(ent["name"])}</b> ({e(ent["hands"] or "no hands")})'
                     f'<br>{links}</figcaption></figure>')
    fails = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in failed.items())
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}} figure{{display:inline-block;margin:.5em;vertical-align:top;
max-width:320px}} img{{max-width:320px;max-height:320px;image-rendering:pixelated;border:1px solid #ccc}}
img.extra{{max-width:100px;max-height:100px}} figcaption{{font-size:small;word-break:break-all}}
.failed{{color:#a00}}</style></head>
<body><h1>{e(title)}</h1><p>{len(entries)} images, {len(failed)} failed.</p>
{"".join(cards)}
{f'<h2 class="failed">Failed images</h2><ul class="failed">{fails}</ul>' if failed else ""}
</body></html>
"""
    with open(path, "w") as fh:
        fh.write(doc)


# ----------------------------------------------------------------------------- the whole run
@dataclasses.dataclass
class Summary:
    """What :func:`run` did: images written, hands predicted, failed images (name -> reason)."""

    images: int = 0
    hands: int = 0
    failed: Dict[str, str] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        failed = ", ".join(f"{k} ({v})" for k, v in self.failed.items())
        return (f"{self.images} images, {self.hands} hands, {len(self.failed)} failed"
                + (f": {failed}" if failed else ""))


@dataclasses.dataclass
class _Job:
    path: str
    name: str
    image: np.ndarray
    # per hand: (box, crop centre, crop side, crop affine, mirrored, the model's side)
    hands: List[Tuple[HandBox, np.ndarray, float, np.ndarray, bool, str]]
    outputs: List[Optional[Dict[str, Dict[str, Any]]]]


def _plan_hands(predictor, hands: Sequence[HandBox]) -> List[Tuple[HandBox, bool, str]]:
    """(hand, mirrored crop, model side) per requested hand: a side the model lacks is mirrored."""
    plan = []
    for hand in hands:
        if hand.side in predictor.sides:
            plan.append((hand, False, hand.side))
        else:
            other = "left" if hand.side == "right" else "right"
            if other not in predictor.sides:
                raise ValueError(f"the predictor predicts {predictor.sides}; cannot predict a {hand.side} hand")
            plan.append((hand, True, other))
    return plan


def run(predictor, image_paths: Sequence[str], out_dir: str, *, boxes: Optional[Mapping] = None,
        batch_size: int = 16, focal_length: float = 0.0, bbox_pad: float = DEFAULT_BBOX_PAD, overlay_zoom: int = 1,
        meta: Optional[Mapping[str, Any]] = None, progress: bool = True,
        log: Callable[[str], None] = print) -> Summary:
    """Predict every image and write its outputs into ``out_dir`` (see ``python -m handjax.predict``).

    Images stream through: each is decoded once, its crops queue for the batched forward, and its
    outputs are written as soon as all its hands are predicted (memory: about one batch of images).
    An image that cannot be read, or whose boxes do not fit it, is recorded in the summary with
    the reason and the run goes on. ``focal_length`` <= 0: max(H, W) of each image.
    """
    from tqdm import tqdm

    if bbox_pad <= 0:
        raise ValueError(f"--bbox_pad must be > 0, got {bbox_pad}")
    if overlay_zoom < 1:
        raise ValueError(f"--overlay_zoom must be >= 1, got {overlay_zoom}")
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(meta or {})
    if boxes is not None and predictor.finds_boxes:
        log("note: this system finds the hands itself; the boxes file is not used")
    elif boxes is not None:
        unused = unused_box_keys(boxes, image_paths)
        if unused:
            log(f"note: the boxes file names images that are not among the inputs (ignored): {', '.join(unused)}")
    forward = BatchedForward(predictor, batch_size)
    size = forward.image_size
    summary = Summary()
    entries: List[dict] = []
    pending: List[_Job] = []
    queue: List[Tuple[_Job, int, np.ndarray]] = []
    bar = tqdm(total=len(image_paths), unit="image", disable=not progress, desc="predict")

    def flush(final: bool):
        while len(queue) >= forward.batch_size or (final and queue):
            batch, queue[:] = queue[:forward.batch_size], queue[forward.batch_size:]
            for (job, k, _), out in zip(batch, forward(np.stack([c for _, _, c in batch]))):
                job.outputs[k] = out
        while pending and all(o is not None for o in pending[0].outputs):
            job = pending.pop(0)
            summary.hands += _write_job(job, predictor, out_dir, focal_length, overlay_zoom, meta, entries)
            summary.images += 1
            bar.update(1)

    for path in image_paths:
        name = output_name(path)
        try:
            image = read_image(path)
            hands = WHOLE_IMAGE if predictor.finds_boxes else boxes_for(path, boxes)
            crops = []
            for hand, mirrored, model_side in _plan_hands(predictor, hands):
                centre, side = crop_window(hand.box, image.shape[:2], bbox_pad)
                _check_box_in_image(hand, image.shape[:2], path)
                crops.append((hand, centre, side, crop_affine(centre, side, size, mirrored), mirrored, model_side))
        except ImageError as e:
            summary.failed[os.path.basename(path)] = str(e).replace(f"{path}: ", "")
            log(f"failed: {e}")
            bar.update(1)
            continue
        job = _Job(path, name, image, crops, [None] * len(crops))
        pending.append(job)
        for k, (_, _, _, affine, _, _) in enumerate(crops):
            queue.append((job, k, make_crop(image, affine, size)))
        flush(final=False)
    flush(final=True)
    bar.close()
    write_index_html(os.path.join(out_dir, "index.html"), entries, summary.failed)
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
        json.dump({"images": summary.images, "hands": summary.hands, "failed": summary.failed, **meta}, fh, indent=2)
    return summary


def _check_box_in_image(hand: HandBox, image_hw, path: str) -> None:
    if hand.box is None:
        return
    h, w = image_hw
    x0, y0, x1, y1 = hand.box
    if x1 < -0.5 or y1 < -0.5 or x0 > w - 0.5 or y0 > h - 0.5:
        raise ImageError(f"{path}: the {hand.side} hand's box {list(hand.box)} lies outside the {w}x{h} image")


def _openpose_order(convention: str) -> Optional[Tuple[int, ...]]:
    from handjax import mano

    try:
        return mano.joint_remap(convention, "freihand")
    except ValueError:
        return None


def _write_job(job: _Job, predictor, out_dir: str, focal_length: float, zoom: int,
               meta: Mapping[str, Any], entries: List[dict]) -> int:
    """Write one image's OBJ / JSON / overlay (and the predictor's extra images); returns its number of hands."""
    h, w = job.image.shape[:2]
    focal = float(focal_length) if focal_length and focal_length > 0 else float(max(h, w))
    principal = ((w - 1) / 2.0, (h - 1) / 2.0)
    results: List[HandResult] = []
    extra_record: Dict[str, Any] = {}
    views: List[Tuple[int, List[HandResult], Dict[str, Any], np.ndarray, Mapping[str, Any]]] = []
    for k, ((hand, centre, side, affine, mirrored, model_side), out) in enumerate(zip(job.hands, job.outputs)):
        crop_results: List[HandResult] = []
        added: Mapping[str, Any] = {}
        if predictor.finds_boxes:
            sides = [s for s in SIDES if s in out] + sorted(set(out) - set(SIDES) - {EXTRAS})
            if getattr(predictor, "postprocess", None) is not None:
                sides, added = predictor.postprocess({s: out[s] for s in sides}, out.get(EXTRAS, {}), affine)
                extra_record.update(added)
            for s in sides:
                crop_results.append(hand_result(out[s], HandBox(s, None), centre, side, affine, False,
                                                predictor.faces.get(s), focal, principal))
        else:
            faces = predictor.faces.get(model_side)
            crop_results.append(hand_result(out[model_side], hand, centre, side, affine, mirrored, faces, focal,
                                            principal))
        results.extend(crop_results)
        if EXTRAS in out:
            views.append((k, crop_results, out[EXTRAS], affine, added))
    meshes: List[Optional[str]] = []
    for hand, fname in zip(results, mesh_file_names(job.name, results)):
        if hand.vertices is None or hand.faces is None:
            meshes.append(None)
            continue
        write_obj(os.path.join(out_dir, fname), hand.vertices, hand.faces,
                  comment=f"handjax.predict: {job.name} {hand.side} hand, camera frame (OpenCV axes), metres")
        meshes.append(fname)
    overlay_name = f"{job.name}_overlay.png"
    extra_files = _write_extra_images(job, predictor, out_dir, zoom, views)
    record = image_record(job.path, (h, w), results, meshes, meta)
    record.update(extra_record)
    record["files"] = {"json": f"{job.name}.json", "overlay": overlay_name, "meshes": [m for m in meshes if m],
                       **extra_files}
    with open(os.path.join(out_dir, f"{job.name}.json"), "w") as fh:
        fh.write(dumps_compact(record) + "\n")
    Image.fromarray(render_overlay(job.image, results, zoom)).save(os.path.join(out_dir, overlay_name))
    entries.append({"name": os.path.basename(job.path), "overlay": overlay_name, "json": f"{job.name}.json",
                    "meshes": [m for m in meshes if m], "hands": ", ".join(r.side for r in results),
                    "extras": extra_files})
    return len(results)


_LABEL = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_RESERVED_LABELS = ("json", "overlay", "meshes", "right", "left")


def _write_extra_images(job: _Job, predictor, out_dir: str, zoom: int, views) -> Dict[str, str]:
    """``Predictor.extra_images`` of each crop with extras, written as lossless PNGs: ``<name>_<label>.png``
    (``<name>_crop<k>_<label>.png`` when the image has several crops). Returns {label: file name}
    (labels prefixed ``crop<k>_`` likewise). Raises ValueError naming the system and label for an image
    that is not uint8 (H, W) or (H, W, 3), or a label that is not a lower-case identifier."""
    from handjax.train.system import PredictionView

    make = getattr(predictor, "extra_images", None)
    if make is None or not views:
        return {}
    system = predictor.meta.get("system", "the predictor")
    files: Dict[str, str] = {}
    canvas = Canvas(job.image, zoom)
    for k, hands, extras, affine, added in views:
        images = make(PredictionView(image=job.image, hands=hands, extras=extras, affine=affine, record=added,
                                     canvas=canvas))
        prefix = "" if len(job.hands) == 1 else f"crop{k + 1}_"
        for label, img in images.items():
            if not isinstance(label, str) or not _LABEL.match(label) or label in _RESERVED_LABELS:
                raise ValueError(f"{system} extra_images: label {label!r} must be a lower-case identifier "
                                 f"([a-z0-9_]) other than {', '.join(_RESERVED_LABELS)}")
            img = np.asarray(img)
            if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
                raise ValueError(f"{system} extra_images[{label!r}]: expected a uint8 (H, W) or (H, W, 3) image, "
                                 f"got {img.dtype} {img.shape}")
            fname = f"{job.name}_{prefix}{label}.png"
            Image.fromarray(np.ascontiguousarray(img)).save(os.path.join(out_dir, fname))
            files[prefix + label] = fname
    return files
