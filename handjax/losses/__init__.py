"""Training objectives: loss terms by name (``terms``) and their building blocks."""
from handjax.losses.contrastive import nt_xent, undo_equivariance, window_pairs
from handjax.losses.supervised import keypoint_l1, param_mse, root_relative, weighted_sum
from handjax.losses.terms import TERMS, check_weights, loss_from_weights, needs_mesh, register_term
