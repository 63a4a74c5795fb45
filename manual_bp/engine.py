"""The autograd-free engine (work in progress: being written)."""
