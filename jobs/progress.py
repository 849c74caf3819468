"""How a long-running service reports progress without printing: it is handed a
:class:`Progress` (the CLI gives a rich progress bar, ``cli.options.RichProgress``; everyone else
gets :data:`NO_PROGRESS`). Services never import rich."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, title: str, total: int | None) -> None: ...

    def describe(self, text: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def update(self, completed: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Reports nothing."""

    def start(self, title: str, total: int | None) -> None:
        pass

    def describe(self, text: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def update(self, completed: int) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()


def progress_of(p: Progress | bool | None) -> Progress:
    """A service's ``progress`` argument: a :class:`Progress`, or a bool/None meaning none (a
    service does not print; only ``cli/`` turns progress into a bar)."""
    return p if p is not None and not isinstance(p, bool) else NO_PROGRESS
