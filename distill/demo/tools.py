"""The demo task with a tool: the model looks the broken product's order up before it answers.

One tool, `lookup_order(order_number)`, declared once here (OpenAI's tool JSON) and "executed" by a pure function
over a ticket's ground truth, so a client's agent loop in a test can run it without a database. A tool conversation
for one ticket is

    user: the ticket                                   (with TOOLS)
    assistant: <tool_call> lookup_order(the broken product's order number)   <- the call turn
    tool: {"order_number": ..., "product": ..., "status": ...}
    assistant: the plain task's answer JSON            <- the answer turn

The hard part is the same as in the plain task: picking the right order number among distractors; here it shows as
the call's arguments. Calls are text in the hermes format of `TOOL_CHAT_TEMPLATE` (what vLLM's `hermes` parser
reads); `format_call` writes it and `parse_tool_calls` reads it back. No torch here: the gateway's tests and
benchmarks import this module.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from distill.demo import catalog, task

ORDER_NUMBER_PATTERN = "^[0-9]{%d,%d}$" % (min(task.ORDER_DIGITS), max(task.ORDER_DIGITS))
LOOKUP_ORDER = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look up a customer's order by its number: the product ordered and the order's status.",
        "parameters": {
            "type": "object",
            "properties": {"order_number": {"type": "string", "pattern": ORDER_NUMBER_PATTERN,
                                            "description": "the order number as the customer wrote it"}},
            "required": ["order_number"],
            "additionalProperties": False,
        },
    },
}
TOOLS = (LOOKUP_ORDER,)  # what a tool conversation offers the model
# An order's status follows its product's group: services run, goods were delivered.
STATUS_BY_GROUP = {"subscription": "active", "software": "active", "hardware": "delivered", "accessory": "delivered"}
_GROUPS = {product.name: product.group for product in catalog.PRODUCTS}
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)  # vLLM's hermes parser's regex


def ticket_orders(ticket: task.Ticket) -> dict[str, str]:
    """The orders the tool knows for one ticket: order number -> product, the broken one and any other listed."""
    orders = {ticket.factors["order"]: ticket.factors["product"]}
    if "other_order" in ticket.factors:
        orders[ticket.factors["other_order"]] = ticket.factors["other_product"]
    return orders


def lookup_order(arguments: Mapping | str, orders: Mapping[str, str]) -> str:
    """The tool's result (JSON text) for `arguments` (a dict, or the JSON text of a call) over the known `orders`.

    A known order gives `{"order_number", "product", "status"}`; anything else an `{"error": ...}` that says why, as
    a real order service would answer: an agent loop hands it to the model as the tool message either way.
    """
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return json.dumps({"error": "arguments are not JSON"})
    number = arguments.get("order_number") if isinstance(arguments, Mapping) else None
    if not isinstance(number, str):
        return json.dumps({"error": "order_number (a string) is required"})
    if number not in orders:
        return json.dumps({"error": f"no order {number}"})
    product = orders[number]
    return json.dumps({"order_number": number, "product": product,
                       "status": STATUS_BY_GROUP.get(_GROUPS.get(product, ""), "active")})


def run_tool(ticket: task.Ticket, name: str, arguments: Mapping | str) -> str:
    """Execute one call of a tool conversation about `ticket`: the tool message's content."""
    if name != LOOKUP_ORDER["function"]["name"]:
        return json.dumps({"error": f"no tool {name}"})
    return lookup_order(arguments, ticket_orders(ticket))


def format_call(name: str, arguments: Mapping) -> str:
    """One call as the model writes it (and TOOL_CHAT_TEMPLATE renders it): what a call turn's answer is."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) \
        + "\n</tool_call>"


def parse_tool_calls(text: str) -> list[dict] | None:
    """The calls in a model's answer as `{"name", "arguments"}` dicts, read as vLLM's hermes parser reads them; None
    when the text holds no call, or a call that is not a JSON object with a string name and object arguments."""
    if "<tool_call>" not in text:
        return None
    calls = []
    for closed, open_ended in _CALL.findall(text):
        try:
            call = json.loads(closed or open_ended)
        except ValueError:
            return None
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)):
            return None
        calls.append({"name": call["name"], "arguments": call["arguments"]})
    return calls or None


def well_formed(calls: Sequence[dict] | None) -> bool:
    """Calls of a known tool whose arguments fit its parameters (required, typed, the pattern, nothing more)."""
    if not calls:
        return False
    for call in calls:
        if call["name"] != LOOKUP_ORDER["function"]["name"]:
            return False
        arguments = call["arguments"]
        if set(arguments) != {"order_number"} or not isinstance(arguments["order_number"], str):
            return False
        if not re.fullmatch(ORDER_NUMBER_PATTERN, arguments["order_number"]):
            return False
    return True


@dataclass(frozen=True)
class ToolConversation:
    """One ticket as a tool conversation: its two assistant turns, each a (messages, target text) pair."""

    ticket: task.Ticket
    call_id: str

    @property
    def call(self) -> dict:
        return {"name": LOOKUP_ORDER["function"]["name"], "arguments": {"order_number": self.ticket.factors["order"]}}

    def call_text(self) -> str:
        return format_call(self.call["name"], self.call["arguments"])

    def call_message(self) -> dict:
        """The assistant's call as OpenAI's wire format has it (arguments as JSON text, no content)."""
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": self.call_id, "type": "function",
             "function": {"name": self.call["name"], "arguments": json.dumps(self.call["arguments"])}}]}

    def tool_message(self) -> dict:
        return {"role": "tool", "tool_call_id": self.call_id,
                "content": run_tool(self.ticket, self.call["name"], self.call["arguments"])}

    def call_turn(self) -> tuple[list[dict], str]:
        """The prompt (with TOOLS) and the call the model must write first."""
        return self.ticket.messages(), self.call_text()

    def answer_turn(self) -> tuple[list[dict], str]:
        """The prompt after the true tool result (with TOOLS) and the final answer: the plain task's answer JSON."""
        return [*self.ticket.messages(), self.call_message(), self.tool_message()], self.ticket.answer_json()

    def messages(self) -> list[dict]:
        """The whole conversation, final answer included."""
        prompt, answer = self.answer_turn()
        return [*prompt, {"role": "assistant", "content": answer}]


def conversations(tickets: Sequence[task.Ticket], seed: int = 0) -> list[ToolConversation]:
    """The tickets as tool conversations, with call ids drawn from `seed` (the same seed, the same ids)."""
    rng = random.Random(f"tool-calls:{seed}")
    return [ToolConversation(ticket, f"call_{rng.getrandbits(64):016x}") for ticket in tickets]


def take(split: str, count: int, seed: int = 0) -> list[ToolConversation]:
    """The first `count` tickets of a split (`task.take`) as tool conversations."""
    return conversations(task.take(split, count, seed=seed), seed)


TURN_KINDS = ("plain", "call", "answer")


@dataclass(frozen=True)
class Turn:
    """One training example of the tool-capable models: a prompt (messages and tools) and the answer to learn."""

    kind: str  # plain: no tools, the answer JSON at once; call: the call turn; answer: the answer turn
    messages: list[dict]
    tools: tuple[dict, ...] | None
    target: str


def turns(tool_conversations: Sequence[ToolConversation], shares: Mapping[str, float], seed: int = 0) -> list[Turn]:
    """One turn per conversation, its kind drawn by `shares` (e.g. {"plain": .3, "call": .4, "answer": .3}): the
    mix the tools models learn, so that they answer plain requests as before and tool conversations in two turns."""
    rng = random.Random(f"tool-turns:{seed}")
    kinds = list(shares)
    if not set(kinds) <= set(TURN_KINDS):
        raise ValueError(f"turn kinds are {TURN_KINDS}, got {kinds}")
    made = []
    for conversation in tool_conversations:
        kind = rng.choices(kinds, weights=[shares[name] for name in kinds])[0]
        if kind == "plain":
            made.append(Turn(kind, conversation.ticket.messages(), None, conversation.ticket.answer_json()))
        else:
            messages, target = conversation.call_turn() if kind == "call" else conversation.answer_turn()
            made.append(Turn(kind, messages, TOOLS, target))
    return made
