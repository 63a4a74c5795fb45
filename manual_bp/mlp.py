"""The seed's network (work in progress: being written)."""

from torch import nn


class MLP(nn.Module):
    pass
