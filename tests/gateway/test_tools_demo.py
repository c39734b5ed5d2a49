"""The tool-calling demo pair (`kdgate serve --demo tools`), as an agent uses it through the official `openai` SDK:
under `tool_choice: auto` the model calls `lookup_order` with the ticket's order number, the agent runs the tool
and sends its result back, and the final answer is the ticket's exact answer; streamed the same. The gateway routes
it as the plain demo: student first, handoff to the teacher below p=0.9."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from distill.demo import tools
from gateway.settings import DEMO_TOOLS_BACKENDS, load_settings
from tests.conftest import ThreadedServer

TICKETS = 4


@pytest.fixture(scope="module")
def tools_gateway(tmp_path_factory):
    from gateway.app import create_app

    store = tmp_path_factory.mktemp("tools-demo") / "store.sqlite3"
    settings = load_settings(None, shadow={"store_url": f"sqlite:///{store}"},
                             **{role: backend | {"threads": 1} for role, backend in DEMO_TOOLS_BACKENDS.items()})
    assert settings.routing.handoff.enabled and settings.serves_demo_models(tools=True)
    with ThreadedServer(create_app(settings)) as server:
        yield server


def run_loop(client: OpenAI, conversation: tools.ToolConversation, stream: bool) -> tuple[dict, str]:
    """(the call the model made, its final answer) through the SDK: create, run the tool, create again."""
    messages = conversation.ticket.messages()
    if stream:
        with client.chat.completions.stream(model="kdgate-demo", messages=messages, tools=list(tools.TOOLS),
                                            temperature=0) as events:
            first = events.get_final_completion()
    else:
        first = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=list(tools.TOOLS),
                                               temperature=0)
    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    result = tools.run_tool(conversation.ticket, call.function.name, call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = client.chat.completions.create(model="kdgate-demo", messages=messages, tools=list(tools.TOOLS),
                                           temperature=0)
    assert not final.choices[0].message.tool_calls
    return {"name": call.function.name, "arguments": json.loads(call.function.arguments)}, \
        final.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_sdks_agent_loop_on_the_tools_demo(tools_gateway, stream):
    client = OpenAI(base_url=f"{tools_gateway.url}/v1", api_key="unused", max_retries=0)
    right = 0
    for conversation in tools.take("test", TICKETS, seed=2):
        call, answer = run_loop(client, conversation, stream)
        right += call == conversation.call and json.loads(answer) == conversation.ticket.answer
    assert right >= TICKETS - 1  # the routed pair's exact match is ~99 % (docs/routing.md#tool-calls)
