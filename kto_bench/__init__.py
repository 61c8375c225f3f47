"""kto-bench: when does KTO beat DPO, and by how much?"""

__version__ = "0.1.0"
