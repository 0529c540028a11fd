"""The route tree, pure: which receivers an event's labels reach."""

from __future__ import annotations

from typing import Any

import pytest

from alerting_service.config import AlertingConfig, Route, default_route
from alerting_service.routing import Router
from tests.alerting_service.delivery_fixtures import new_whsec


def route(**tree: Any) -> Route:
    return Route.model_validate(tree)


def labels(**values: str) -> dict[str, str]:
    return {"type": "task_failure", "severity": "error", "dag_id": "batch"} | values


TREE = route(
    receivers=["fallback"],
    routes=[
        {
            "match": {"type": ["task_failure", "dag_run_failure"]},
            "receivers": ["email", "webhook"],
            "continue": True,
        },
        {"match": {"labels.team": "payments"}, "receivers": ["payments-pager"]},
        {"match": {"dag_id": "batch"}, "receivers": ["batch-owners"]},
    ],
)


def test_without_continue_the_first_matching_child_wins() -> None:
    assert Router(TREE).match(labels(type="task_retry", **{"labels.team": "payments"})) == ("payments-pager",)


def test_continue_goes_on_to_the_next_matching_sibling() -> None:
    assert Router(TREE).match(labels(**{"labels.team": "payments"})) == ("email", "webhook", "payments-pager")


def test_a_route_without_continue_stops_its_later_siblings() -> None:
    # Matches the payments route (no continue), so the dag_id route after it is not reached.
    assert "batch-owners" not in Router(TREE).match(labels(**{"labels.team": "payments"}))


def test_no_matching_child_falls_back_to_the_parent() -> None:
    assert Router(TREE).match(labels(type="task_success", dag_id="other")) == ("fallback",)


def test_a_child_without_receivers_inherits_its_parents() -> None:
    tree = route(
        receivers=["parent"],
        routes=[{"match": {"severity": "critical"}, "routes": [{"match": {"dag_id": "x"}}]}],
    )

    assert Router(tree).match(labels(severity="critical", dag_id="x")) == ("parent",)


def test_nested_routes_match_depth_first() -> None:
    tree = route(
        receivers=[],
        routes=[
            {
                "match": {"type": "task_failure"},
                "receivers": ["failures"],
                "routes": [{"match": {"dag_id": "batch"}, "receivers": ["batch-failures"]}],
            }
        ],
    )

    assert Router(tree).match(labels()) == ("batch-failures",)
    assert Router(tree).match(labels(dag_id="other")) == ("failures",)


def test_a_receiver_reached_twice_is_listed_once() -> None:
    tree = route(
        receivers=[],
        routes=[
            {"match": {"type": "task_failure"}, "receivers": ["webhook"], "continue": True},
            {"match": {"dag_id": "batch"}, "receivers": ["webhook", "email"]},
        ],
    )

    assert Router(tree).match(labels()) == ("webhook", "email")


def test_a_label_the_event_lacks_does_not_match() -> None:
    tree = route(receivers=[], routes=[{"match": {"task_id": "load"}, "receivers": ["loaders"]}])

    assert Router(tree).match(labels()) == ()


def receivers_config() -> AlertingConfig:
    return AlertingConfig.model_validate(
        {
            "receivers": [
                {
                    "name": "mail",
                    "email": {"to": ["a@b.example"], "from": "c@d.example", "smarthost": {"host": "h"}},
                },
                {"name": "hook", "webhook": {"url": "https://hooks.example/x", "secrets": [new_whsec()]}},
            ]
        }
    )


@pytest.mark.parametrize(
    ("event_type", "expected"),
    [
        ("task_failure", ("mail", "hook")),
        ("dag_run_failure", ("mail", "hook")),
        ("deadline_missed", ("mail", "hook")),
        ("task_retry", ("hook",)),
        ("task_success", ()),
        ("dag_run_success", ()),
    ],
)
def test_the_default_route_sends_failures_everywhere_retries_to_webhooks_and_successes_nowhere(
    event_type: str, expected: tuple[str, ...]
) -> None:
    router = Router(default_route(receivers_config().receivers))

    assert router.match(labels(type=event_type)) == expected


def test_a_config_without_a_route_uses_the_default_route() -> None:
    config = receivers_config()

    assert Router(config.root_route).match(labels(type="task_retry")) == ("hook",)
