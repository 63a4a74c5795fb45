"""convert / revert (work in progress: being written)."""


def convert(model, inplace=False):  # noqa: ANN001, ANN201
    raise NotImplementedError


def revert(model, inplace=False):  # noqa: ANN001, ANN201
    raise NotImplementedError
