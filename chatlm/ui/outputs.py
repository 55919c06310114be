"""A handler's outputs by name.

Gradio takes a handler's outputs as a tuple in the order of the event's output list. Counted by
hand, a tuple of eleven values is where a change goes wrong. Here the layout lists the components
once, under names (``Named.of``), and a handler says only what it changes: ``STARTED(chat=…,
notice=…)``. What it leaves out stays as it is (``gr.update()``). The tuple that reaches Gradio,
and any script calling the endpoint, is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr


class Named:
    """The names of an event's outputs, in the order the layout passes their components."""

    def __init__(self, *names: str) -> None:
        if len(set(names)) != len(names):
            raise ValueError(f"a name twice in {names}")
        self.names = names

    def __add__(self, other: Named) -> Named:
        return Named(*self.names, *other.names)

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, **changed: Any) -> tuple[Any, ...]:
        """The outputs with those named changed; the rest are left as the page has them."""
        unknown = set(changed) - set(self.names)
        if unknown:
            raise TypeError(f"not among these outputs: {sorted(unknown)}")
        return tuple(changed.get(name, gr.update()) for name in self.names)

    def of(self, components: Mapping[str, Any]) -> list[Any]:
        """The layout's output list: the components of these names, in this order."""
        return [components[name] for name in self.names]
