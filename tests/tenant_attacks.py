"""What an attacking tenant brings along: classes of its own, which the test cluster's processes import
(a client's own script's classes would travel by value)."""


class HiddenRequest:
    """An object the scheduler cannot look into: it calls the request it hides on the worker."""

    def __init__(self, request):
        self._r = request

    def __call__(self, x):
        return self._r(x=x)


class SameAsAnyone(str):
    """A tenant that compares equal to (and not unequal from) any name."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class Opens:
    """Unpickled, it creates the file ``path`` (a stand-in for any code a pickle can run)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def exponential(depth):
    """A list of a few hundred pickled bytes whose tree has 2**depth leaves."""
    node = [0]
    for _ in range(depth):
        node = [node, node]
    return node


class Opaque:
    """Pickles as ``frozenset(value)``: the client sends ``value`` without looking into it."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return frozenset, (self.value,)
