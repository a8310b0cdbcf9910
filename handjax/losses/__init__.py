"""Training objectives."""
from handjax.losses.contrastive import nt_xent, undo_equivariance, window_pairs
from handjax.losses.supervised import keypoint_l1, param_mse, root_relative, weighted_sum
