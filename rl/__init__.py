"""Pure functional RL core: advantages, losses, shaping, metrics, rewards, data, and the one trainer.

Import the submodules directly (``from rl import advantages, losses``); nothing heavy is imported here.
"""
