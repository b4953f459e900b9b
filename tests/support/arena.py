"""The arena tests' stub of Hugging Face's ``spaces`` package (the tiny Silkie comes from the kit's bench)."""

from __future__ import annotations

from pathlib import Path

STUB_SPACES = '''"""Stand-in for Hugging Face's `spaces`: GPU records what it decorates and each call of it."""
import functools, inspect
decorated, called = [], []
def GPU(task=None, *, duration=60, **kwargs):
    def wrap(fn):
        decorated.append({"name": fn.__name__, "duration": duration, "generator": inspect.isgeneratorfunction(fn)})
        @functools.wraps(fn)
        def run(*args, **kw):
            called.append(fn.__name__)
            yield from fn(*args, **kw)
        return run
    return wrap(task) if callable(task) else wrap
'''


def stub_spaces(folder: Path) -> Path:
    """Write the stub ``spaces`` package under ``folder`` (put ``folder`` on sys.path); returns ``folder``."""
    (folder / "spaces").mkdir(parents=True, exist_ok=True)
    (folder / "spaces" / "__init__.py").write_text(STUB_SPACES)
    return folder
