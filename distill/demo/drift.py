"""The demo's drift: products launched after the student was distilled.

Production students go stale when the world moves past their distillation data: new products, a new queue. Here
five products (one or more per product group) are *launched*: the teacher learned them, the pre-launch student's
distillation data left every ticket that mentions them out. Before the launch, traffic is the usual ticket stream
minus those products; after it, launched-product tickets arrive too. The student cannot route a product it never
saw (its queue depends on the product's group) nor name it in the reply; the teacher can. `kdgate demo drift` runs
the loop on this shift.
"""

from __future__ import annotations

from collections.abc import Iterator

from distill.demo import catalog, task

LAUNCHED = ("Lumen Lamp", "CodeNest", "Power Bank", "Orbit Tracker", "CloudRadio")
SHIFTED_SLICE = "launched"  # the golden set's slice of launched-product tickets


def _names(product: catalog.Product) -> tuple[str, ...]:
    return (product.name, *product.aliases)


LAUNCHED_NAMES = tuple(name.lower() for product in catalog.PRODUCTS if product.name in LAUNCHED
                       for name in _names(product))


def mentions_launched(ticket: task.Ticket) -> bool:
    text = ticket.text.lower()
    return ticket.factors["product"] in LAUNCHED or any(name in text for name in LAUNCHED_NAMES)


def prelaunch(split: str, seed: int = 0) -> Iterator[task.Ticket]:
    """The ticket stream before the launch: nothing that mentions a launched product."""
    return (ticket for ticket in task.tickets(split, seed) if not mentions_launched(ticket))


def launched(split: str, seed: int = 0) -> Iterator[task.Ticket]:
    """Tickets about a launched product (the broken one is launched)."""
    return (ticket for ticket in task.tickets(split, seed) if ticket.factors["product"] in LAUNCHED)


def take(stream: Iterator[task.Ticket], count: int) -> list[task.Ticket]:
    return [next(stream) for _ in range(count)]
