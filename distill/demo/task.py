"""The synthetic support-ticket triage task: a seedable generator with an exact ground truth, and its scorer.

A ticket is free text; the answer is one JSON object `{"queue", "priority", "reply"}` (see `catalog` for the rules).
The task is built to need depth rather than lookup: distractor numbers sit next to the order number, urgency cues
come negated, priority depends on three factors at once, product names arrive as aliases and misspellings, and the
reply copies two entities. Splits are disjoint streams of one generator (`train`, `val`, `test`), each reproducible
from the seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from distill.demo import catalog

ANSWER_FIELDS = ("queue", "priority", "reply")
# The answer as a JSON schema, for clients that ask for it (`response_format`): what `format_answer` writes
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"queue": {"type": "string", "enum": list(catalog.QUEUES)},
                   "priority": {"type": "string", "enum": list(catalog.PRIORITIES)},
                   "reply": {"type": "string"}},
    "required": list(ANSWER_FIELDS),
    "additionalProperties": False,
}
SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_029}
TWO_ORDER_SHARE = 0.6  # tickets listing two orders, where the answer must follow the broken product's own number
RENAMED_SHARE = 0.5  # of those, the issue sentence names the product differently from the listing (alias vs name)
ORDER_DIGITS = (5, 6)  # an order number has 5 or 6 digits (and so do the distractor orders next to it)

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Yuki", "Noah", "Sofia", "Omar", "Emma",
    "Ivan", "Priya", "Lucas", "Hana", "Mateo", "Zara", "Ethan", "Leila", "Felix", "Nadia", "Tomas", "Ines", "Kofi",
    "Anya", "Ravi", "Greta", "Diego", "Mei", "Jonas", "Amara", "Henrik", "Lucia", "Sven", "Nour", "Pablo", "Elif",
    "Kenji", "Rosa", "Tariq", "Alma", "Bruno", "Dalia", "Emil", "Farah", "Gustav", "Ingrid", "Joao", "Kaveh",
    "Lotte", "Mirela", "Nils", "Oona", "Rafael", "Saanvi", "Teodor", "Ulla", "Vikram", "Wanda", "Ximena", "Yusuf",
)
SURNAMES = ("Lopez", "Smith", "Khan", "Wei", "Petrova", "Silva", "Haddad", "Murphy", "Tanaka", "Berg", "Rossi",
            "Okafor", "Novak", "Patel", "Costa", "Meyer", "Kowalski", "Dubois", "Nakamura", "Fischer")


@dataclass(frozen=True)
class Ticket:
    """One example: the ticket text, its exact answer, and the hidden factors that produced it."""

    text: str
    answer: dict[str, str]
    factors: dict[str, str] = field(default_factory=dict)

    def messages(self) -> list[dict[str, str]]:
        """The ticket as a one-turn chat: the demo models are single-purpose, so no system prompt is needed."""
        return [{"role": "user", "content": self.text}]

    def answer_json(self) -> str:
        return format_answer(self.answer)


def format_answer(answer: dict[str, str]) -> str:
    """The canonical answer text: compact JSON in field order, the form the models are trained to emit."""
    return json.dumps({key: answer[key] for key in ANSWER_FIELDS}, ensure_ascii=False)


def _zipf_weights(n: int, exponent: float = 1.1) -> list[float]:
    return [1.0 / (rank + 1) ** exponent for rank in range(n)]


_PRODUCT_WEIGHTS = _zipf_weights(len(catalog.PRODUCTS))


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _mention(rng: random.Random, product: catalog.Product) -> str:
    return product.name if rng.random() < 0.45 else rng.choice(product.aliases)


def _with(article: str, mention: str) -> str:
    """`the Aero` stays as it is; `smarthub` becomes `the smarthub` / `my smarthub` / `a smarthub`."""
    bare = mention.removeprefix("the ")
    if article == "the" and mention.startswith("the "):
        return mention
    if article == "a" and bare[0].lower() in "aeiou":
        article = "an"
    return f"{article} {bare}"


def _upper_first(text: str) -> str:
    return text[0].upper() + text[1:]


def _order_sentence(rng: random.Random, mention: str, issue_phrase: str, order: str) -> str:
    the, my, a = _with("the", mention), _with("my", mention), _with("a", mention)
    forms = (
        f"{_upper_first(my)} from order {order} {issue_phrase}.",
        f"Order #{order}: {the} {issue_phrase}.",
        f"{_upper_first(the)} I got with order number {order} {issue_phrase}.",
        f"I bought {a} (order {order}) and it {issue_phrase}.",
        f"Regarding order {order}, {my} {issue_phrase}.",
    )
    return rng.choice(forms)


def _two_order_sentences(rng: random.Random, mentions: tuple[str, str], orders: tuple[str, str], named: str,
                         issue_phrase: str) -> list[str]:
    """Two orders listed together, and a separate sentence naming (as `named`) which product has the issue.

    The answer follows the named product back to its own order number: a multi-hop lookup (issue sentence ->
    product mention in the listing -> the number next to it -> copy it) that needs depth, not a wider layer. When
    the issue sentence uses another form of the name than the listing ("the Aero" / "Aero Router"), the match
    needs both forms normalised first: one more hop.
    """
    (m1, m2), (o1, o2) = mentions, orders
    listing = rng.choice((
        f"I have two orders: {o1} for {_with('the', m1)} and {o2} for {_with('the', m2)}.",
        f"Order {o1} was {_with('a', m1)} and order {o2} was {_with('a', m2)}.",
        f"Last month I ordered {_with('a', m1)} (order {o1}) and {_with('a', m2)} (order {o2}).",
    ))
    named = _with("the", named)
    issue = rng.choice((f"{_upper_first(named)} {issue_phrase}.", f"Sadly {named} {issue_phrase}.",
                        f"Only {named} {issue_phrase}."))
    return [listing, issue]


def _distractor_sentences(rng: random.Random, order_digits: int) -> list[str]:
    """Numbers the reply must NOT copy: phone, account, an earlier order, a ticket reference."""
    pool = [
        lambda: f"You can call me on {_number(rng, 3)} {_number(rng, 4)}.",
        lambda: f"My account number is {_number(rng, 7)}.",
        lambda: f"My previous order {_number(rng, order_digits)} arrived fine.",
        lambda: f"Last year order {_number(rng, order_digits)} had the same problem.",
        lambda: f"I already opened ticket {_number(rng, 4)} about this.",
        lambda: f"The box says serial {_number(rng, 6)}.",
    ]
    count = rng.choice((0, 1, 1, 2, 2, 3))
    return [make() for make in rng.sample(pool, count)]


def _urgency_sentences(rng: random.Random) -> tuple[list[str], str]:
    """Zero to two cues, some negated; returns the sentences and the strongest non-negated cue level."""
    sentences: list[str] = []
    levels: list[str] = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        if rng.random() < 0.3:
            sentences.append(rng.choice(catalog.NEGATED_CUES))
        else:
            level = rng.choice(("low", "medium", "high"))
            sentences.append(rng.choice(catalog.URGENCY_CUES[level]))
            levels.append(level)
    strongest = "none"
    if levels:
        # "low" is a real cue (it lowers priority) but any medium or high cue outranks it.
        rank = {"low": 0, "medium": 1, "high": 2}
        strongest = max(levels, key=rank.__getitem__)
    return sentences, strongest


def make_ticket(rng: random.Random, two_order_share: float = TWO_ORDER_SHARE) -> Ticket:
    product = rng.choices(catalog.PRODUCTS, weights=_PRODUCT_WEIGHTS)[0]
    issue = rng.choice(catalog.ISSUE_KINDS)
    tier = rng.choice(catalog.TIERS)
    first_name = rng.choice(FIRST_NAMES)
    order_digits = rng.choice(ORDER_DIGITS)
    order = _number(rng, order_digits)
    issue_phrase = rng.choice(catalog.ISSUE_PHRASES[issue])

    urgency, cue_level = _urgency_sentences(rng)
    if rng.random() < two_order_share:
        other = rng.choice([p for p in catalog.PRODUCTS if p.name != product.name])
        other_order = _number(rng, order_digits)
        broken = rng.randrange(2)  # the position of the product with the issue in the listing
        products = (product, other) if broken == 0 else (other, product)
        orders = (order, other_order) if broken == 0 else (other_order, order)
        mentions = (_mention(rng, products[0]), _mention(rng, products[1]))
        named = mentions[broken]
        if rng.random() < RENAMED_SHARE:
            named = rng.choice([form for form in (product.name, *product.aliases) if form != named])
        body = _two_order_sentences(rng, mentions, orders, named, issue_phrase)
        shape = "two_orders_renamed" if named != mentions[broken] else "two_orders"
        listed = {"other_order": other_order, "other_product": other.name}
    else:
        body = [_order_sentence(rng, _mention(rng, product), issue_phrase, order)]
        shape = "one_order"
        listed = {}
    extras = _distractor_sentences(rng, order_digits) + urgency
    tier_sentence = rng.choice(catalog.TIER_PHRASES[tier])
    if tier_sentence:
        extras.append(tier_sentence)
    rng.shuffle(extras)
    # The order facts keep their own order (listing before the issue sentence); the rest goes around them.
    split = rng.randint(0, len(extras))
    body = extras[:split] + body + extras[split:]

    greeting = rng.choice(("Hello,", "Hi there,", "Hi support,", "Dear team,", ""))
    signature = rng.choice((f"Thanks, {first_name}", f"- {first_name} {rng.choice(SURNAMES)}",
                            f"Regards, {first_name} {rng.choice(SURNAMES)}", f"{first_name} here."))
    parts = [greeting] + body + [signature] if not signature.endswith("here.") else [greeting, signature] + body
    text = " ".join(part for part in parts if part)

    queue = catalog.QUEUE_TABLE[product.group][issue]
    answer = {
        "queue": queue,
        "priority": catalog.priority_for(cue_level, tier, issue),
        "reply": catalog.reply_for(first_name, order, product.name, queue),
    }
    # `order` (the broken product's) and the other listed order, if any, are what the demo's order-lookup tool knows
    factors = {"product": product.name, "group": product.group, "issue": issue, "tier": tier, "cue": cue_level,
               "shape": shape, "order": order, **listed}
    return Ticket(text=text, answer=answer, factors=factors)


def tickets(split: str, seed: int = 0) -> Iterator[Ticket]:
    """An endless, reproducible stream of tickets for one split."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    rng = random.Random(seed * 7_919 + SPLIT_OFFSETS[split])
    while True:
        yield make_ticket(rng)


def take(split: str, count: int, seed: int = 0) -> list[Ticket]:
    stream = tickets(split, seed)
    return [next(stream) for _ in range(count)]
