"""MANO as plain pytrees and pure functions (jit, vmap, grad, shardable)."""
from handjax.mano.conventions import CONVENTIONS, MANO21_NAMES, Convention, get_convention, joint_remap
from handjax.mano.forward import ManoOutput, mano_forward, mano_joints
from handjax.mano.io import (
    MANO_DOWNLOAD_HINT,
    RestrictedMANOUnpickler,
    apply_left_shapedirs_fix,
    load_mano_pickle,
    load_model,
    load_npz,
    save_npz,
)
from handjax.mano.skinning import (
    blend_shapes_and_poses,
    forward_kinematics,
    forward_kinematics_rt,
    joints_from_betas,
    lbs,
    pose_correctives,
    regress_joints,
    shape_blend,
    skin,
)
from handjax.mano.model import (
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    ManoModel,
    kinematic_levels,
    model_from_arrays,
    model_to_arrays,
)
from handjax.mano.pose import (
    POSE_TYPES,
    from_axis_angle,
    from_pca,
    from_quaternion,
    from_rot6d,
    mirror_axis_angle,
    mirror_points,
    mirror_rotmats,
    to_rotmats,
)
from handjax.mano.sides import mirror_model
