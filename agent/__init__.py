"""DQfD, Deep Q-learning from Demonstrations (Hester et al., AAAI 2018), in PyTorch and NumPy.

Usable on its own on any task with feature-vector states and discrete actions::

    from agent import DQfDAgent, DQfDConfig

    agent = DQfDAgent(state_dim=4, n_actions=2, config=DQfDConfig(), seed=0)
    agent.add_demonstrations(states, actions, rewards, dones, episode_ids=episode_ids)
    agent.pretrain(10_000)
    action = agent.act(state)
    agent.observe(state, action, reward, next_state, done)
    agent.train_step()

This package never imports the service, FastAPI or SQLAlchemy.
"""

from agent.config import DQfDConfig
from agent.demonstrations import Episode
from agent.dqfd import DQfDAgent
from agent.inference import NumpyQNetwork
from agent.item_dqfd import ItemDQfDAgent, ItemNetworkConfig
from agent.validation import validate_transitions

__all__ = [
    "DQfDAgent",
    "DQfDConfig",
    "Episode",
    "ItemDQfDAgent",
    "ItemNetworkConfig",
    "NumpyQNetwork",
    "validate_transitions",
]
__version__ = "0.1.0"
