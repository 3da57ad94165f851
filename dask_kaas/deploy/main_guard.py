"""A script that starts a local cluster at module level, without ``if __name__ == "__main__":``.

Dask starts worker processes with ``spawn``, which imports the script again in each new process:
there the unguarded cluster start runs again, the worker dies in Python's bootstrapping check, and
its nanny starts it again, so the parent waits out a two-minute timeout. Found before anything
starts, it is an error that says what to write.
"""

from __future__ import annotations

import ast
import inspect
import sys

import dask.config

from ..errors import ConfigError

__all__ = ["check_main_guard", "unguarded_line"]


def _is_main_test(node: ast.expr) -> bool:
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def unguarded_line(source: str, line: int) -> bool:
    """Whether ``line`` of module ``source`` runs at import, outside every ``if __name__ == "__main__":``
    block and every function or class body."""
    for node in ast.parse(source).body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            if isinstance(node, ast.If) and _is_main_test(node.test):
                return line > max(n.end_lineno or n.lineno for n in node.body)  # in its else branch
            return not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    return False


def check_main_guard(what: str = "LocalKaasCluster") -> None:
    """Raise :class:`ConfigError` when ``what`` is being started by the module-level code of a script
    that worker processes will import again (Dask's ``spawn``/``forkserver``)."""
    if dask.config.get("distributed.worker.multiprocessing-method") == "fork":
        return
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not path.endswith(".py"):
        return  # an interactive session, a notebook, python -c: nothing is imported again
    frame, line = inspect.currentframe(), None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__file__") == path:
            line = frame.f_lineno  # the outermost module-level call in the script
        frame = frame.f_back
    if line is None:
        return
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError:
        return
    if unguarded_line(source, line):
        raise ConfigError(
            f"{what} is started at module level in {path} (line {line}); its worker processes import that "
            f"script again and would start it again. Put the cluster code under\n"
            f'    if __name__ == "__main__":\n'
            f"(see the README's Quick start)"
        )
