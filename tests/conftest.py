"""Suite-wide settings."""

import torch

# The machines running the suite have two cores shared by every test process; one intra-op thread per
# process keeps small-network updates fast and timings of neighbouring tests undisturbed.
torch.set_num_threads(1)
