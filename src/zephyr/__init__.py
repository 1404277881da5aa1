"""zephyr: the Zephyr alignment recipe (dSFT -> AI feedback -> dDPO -> evaluation) as one toolkit."""

__version__ = "0.1.0"
