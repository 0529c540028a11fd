"""Which receivers an event goes to: an Alertmanager-style route tree, compiled once, matched per event.

A route matches when every one of its `match` keys has one of the listed values in the event's labels.
Matching is depth-first: the first matching child wins unless it has `continue: true`, in which case its
later siblings are tried too; a matching route none of whose children matches is itself the result. A route
without its own `receivers` inherits its parent's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from alerting_service.config import Route


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    matchers: tuple[tuple[str, frozenset[str]], ...]
    receivers: tuple[str, ...]
    continue_: bool
    children: tuple[CompiledRoute, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) in values for key, values in self.matchers)

    def matching(self, labels: Mapping[str, str]) -> list[CompiledRoute]:
        """The routes whose receivers apply, in tree order (Alertmanager's Route.Match)."""
        if not self.matches(labels):
            return []
        found: list[CompiledRoute] = []
        for child in self.children:
            child_found = child.matching(labels)
            found += child_found
            if child_found and not child.continue_:
                break
        return found or [self]


def compile_route(route: Route, inherited_receivers: tuple[str, ...] = ()) -> CompiledRoute:
    receivers = tuple(route.receivers) if route.receivers is not None else inherited_receivers
    return CompiledRoute(
        matchers=tuple((key, frozenset(values)) for key, values in route.match.items()),
        receivers=receivers,
        continue_=route.continue_,
        children=tuple(compile_route(child, receivers) for child in route.routes),
    )


class Router:
    def __init__(self, root: Route) -> None:
        self._root = compile_route(root)

    def match(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        """The receiver names for these labels, each once, in the order the tree lists them."""
        names = (name for route in self._root.matching(labels) for name in route.receivers)
        return tuple(dict.fromkeys(names))
