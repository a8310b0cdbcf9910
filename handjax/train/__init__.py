"""The generic training loop and per-system recipes."""
from handjax.train.loop import NonFiniteLossError, Preempted, Task, global_batch, make_mesh, replicate, train
from handjax.train.optim import make_optimizer, make_schedule
