"""The generic training loop and per-system recipes."""
from handjax.train.loop import NonFiniteLossError, Task, global_batch, make_mesh, train
from handjax.train.optim import make_optimizer, make_schedule
