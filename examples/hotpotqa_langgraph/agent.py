"""A LangGraph search agent for multi-hop questions, written the way LangGraph users write one:
a chat model with a search tool bound, a tool node, and the ReAct loop between them.
Nothing in this file knows about ERL; `train_local.py` trains it as it is.

    graph = build_agent(ChatOpenAI(model=...), search_fn)     # any LangChain chat model
    state = await graph.ainvoke({"messages": [("user", "Who founded ...?")]})
"""

from __future__ import annotations

from collections.abc import Callable

from langchain_core.messages import SystemMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

SYSTEM_PROMPT = (
    "You answer questions that may need several facts. Use the search tool to look facts up; "
    "search again with what you learned when one passage is not enough. "
    "When you know the answer, reply with it in \\boxed{}, e.g. \\boxed{Paris}: a short phrase only."
)


def build_agent(llm, search_fn: Callable[[str], str]):
    @tool
    def search(query: str) -> str:
        """Search the document collection; returns the passages that best match the query."""
        return search_fn(query)

    llm_with_tools = llm.bind_tools([search])

    async def agent(state: MessagesState):
        reply = await llm_with_tools.ainvoke([SystemMessage(SYSTEM_PROMPT), *state["messages"]])
        return {"messages": [reply]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([search], handle_tool_errors=True))  # a failing search is shown to the model
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()
