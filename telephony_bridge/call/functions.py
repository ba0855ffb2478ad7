"""The model's function calls: held until their response completes, answered once each, one response.create a batch.

The service emits a call's arguments (`response.function_call_arguments.done`, and the item in
`response.output_item.done`) before it knows whether the response will complete: a caller who
speaks over it cancels the response, calls and all. So calls are collected per response and
acted on only when `response.done` says `completed`; a cancelled or incomplete response's calls
are dropped unrun. Every call that runs gets a `function_call_output`, and when the last output
of a response is in, one `response.create` lets the model speak from them (not one per call).
Calls belong to the session that made them: a new session has never heard of them.
"""

from __future__ import annotations

from telephony_bridge.call.events import Action, AnswerFunctionCall, CreateResponse, FunctionCallRequested


class FunctionCalls:
    def __init__(self) -> None:
        self._requested: dict[str, dict[str, FunctionCallRequested]] = {}
        self._owed: dict[str, set[str]] = {}
        self._respond: dict[str, bool] = {}
        self._response_of: dict[str, str] = {}

    @property
    def outstanding(self) -> int:
        """Calls that run and are not answered yet."""
        return sum(len(owed) for owed in self._owed.values())

    def requested(self, call: FunctionCallRequested) -> None:
        """A call's arguments are complete (it may be reported twice: by its arguments and by its item)."""
        calls = self._requested.setdefault(call.response_id, {})
        if call.name or call.call_id not in calls:
            calls[call.call_id] = call

    def response_done(self, response_id: str, status: str) -> list[FunctionCallRequested]:
        """The calls to run now: those of a completed response, each once."""
        calls = self._requested.pop(response_id, {})
        if status != "completed" or not calls:
            return []
        self._owed[response_id] = set(calls)
        self._respond[response_id] = False
        for call_id in calls:
            self._response_of[call_id] = response_id
        return list(calls.values())

    def answer(self, call_id: str, output: str, *, respond: bool = True) -> list[Action]:
        """The output of a call; with the last of its response's outputs, a `response.create` if any asked for one."""
        response_id = self._response_of.pop(call_id, None)
        if response_id is None:
            return []
        actions: list[Action] = [AnswerFunctionCall(call_id, output)]
        owed = self._owed[response_id]
        owed.discard(call_id)
        self._respond[response_id] |= respond
        if not owed:
            del self._owed[response_id]
            if self._respond.pop(response_id):
                actions.append(CreateResponse())
        return actions

    def session_lost(self) -> None:
        self._requested.clear()
        self._owed.clear()
        self._respond.clear()
        self._response_of.clear()
