"""The judge's prompts, written for this project (the upstream tools' wording is not reused).

Two kinds: a pairwise comparison that ends in a five-step verdict (``[[A>>B]]`` ... ``[[B>>A]]``,
see :mod:`langgraph_moa.evaluation.scoring`), and a single-answer grade from 1 to 10 in
``[[N]]``, with an optional reference answer (MT-Bench's math, reasoning and coding questions) and
the earlier turns of the conversation for a second-turn grade. A judge whose reply has no
verdict in that form may be asked once more (:func:`again_messages`): its reply and a reminder
of the form are added to the request.
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

_PAIRWISE_SYSTEM = """\
You judge which of two AI assistants answered a user's request better.

First, write your own short answer to the request, so you know what a good answer contains.
Then compare both answers with yours and with each other: look for mistakes and missing facts,
and weigh helpfulness, relevance and clarity. Length is not a merit in itself; an answer that
pads or repeats itself is worse, not better. The order in which the answers are shown says
nothing about their quality.

End with exactly one verdict on its own line, in double square brackets:
[[A>>B]]  Assistant A is much better
[[A>B]]   Assistant A is better
[[A=B]]   they are about equally good
[[B>A]]   Assistant B is better
[[B>>A]]  Assistant B is much better"""

_PAIRWISE_USER = """\
<request>
{question}
</request>

<answer_of_assistant_A>
{answer_a}
</answer_of_assistant_A>

<answer_of_assistant_B>
{answer_b}
</answer_of_assistant_B>"""

_RATING_SYSTEM = """\
You grade one AI assistant's reply to a user, as a fair and strict reviewer.

Judge the reply's correctness, helpfulness, relevance, depth and clarity.{reference_note}
Explain your assessment in a few sentences, then give a grade from 1 (useless or wrong) to 10
(excellent, nothing to improve) on its own line, in double square brackets, like this: [[6]]"""

_REFERENCE_NOTE = """
A reference answer is given: it is correct. Compare the reply with it; a reply whose result
differs from the reference is wrong, however well it is written."""

_SECOND_TURN_NOTE = """
The conversation has several turns: grade only the assistant's LAST reply, in the light of what
came before."""


_AGAIN_PROMPT = """\
Your reply did not end with a verdict in the form asked for, so it cannot be counted. Answer \
again with only the final line: {form}"""

VERDICT_FORM = "one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]] or [[B>>A]]"
GRADE_FORM = "the grade from 1 to 10 in double square brackets, like [[6]]"


def again_messages(messages: list[BaseMessage], reply: str, form: str) -> list[BaseMessage]:
    """The request asked once more after ``reply`` gave no verdict: the reply, then a
    reminder of ``form`` (:data:`VERDICT_FORM` or :data:`GRADE_FORM`)."""
    return [*messages, AIMessage(reply), HumanMessage(_AGAIN_PROMPT.format(form=form))]


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> list[BaseMessage]:
    """The judge's request for one game: ``answer_a`` shown first."""
    user = _PAIRWISE_USER.format(question=question, answer_a=answer_a, answer_b=answer_b)
    return [SystemMessage(_PAIRWISE_SYSTEM), HumanMessage(user)]


def rating_messages(
    questions: list[str], answers: list[str], reference: str | None = None
) -> list[BaseMessage]:
    """The judge's request for grading the last of ``answers`` (one per question, in order)."""
    note = _REFERENCE_NOTE if reference else ""
    if len(questions) > 1:
        note += _SECOND_TURN_NOTE
    parts = []
    for turn, (question, answer) in enumerate(zip(questions, answers, strict=True), 1):
        parts.append(f"<user turn={turn}>\n{question}\n</user>")
        parts.append(f"<assistant turn={turn}>\n{answer}\n</assistant>")
    if reference:
        parts.append(
            f"<reference_answer_for_last_turn>\n{reference}\n</reference_answer_for_last_turn>"
        )
    system = _RATING_SYSTEM.format(reference_note=note)
    return [SystemMessage(system), HumanMessage("\n\n".join(parts))]
