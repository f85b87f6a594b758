"""Prompt texts, as module-level constants formatted by the nodes.

The references are a numbered list, as in the Mixture-of-Agents paper, but they come in a last
user message after the conversation rather than in the system message, so a row's requests share
their prefix (see :func:`langgraph_moa.nodes.messages.synthesis_messages`); the wording is this
project's own.
"""

from __future__ import annotations

# A proposer's or the aggregator's last message when earlier answers exist.
SYNTHESIZE_PROMPT = """\
Other AI assistants have already answered the user's latest message; their answers are listed \
below. Use them as material, not as authority: any of them may be biased, incomplete, outdated or \
simply wrong. Check them against each other and against what you know, keep what is correct and \
useful, correct or discard the rest, and write one refined, accurate and complete answer of your \
own. Do not copy them verbatim and do not refer to them or to their authors; answer the user \
directly.

Answers to work from:
{references}"""

# Added after SYNTHESIZE_PROMPT for the aggregator when a critic has reviewed the candidates.
CRITIQUE_SECTION = """

A careful reviewer has examined these answers. Take the review into account, but judge it too:
{critique}"""

# The critic's system message.
CRITIC_SYSTEM_PROMPT = """\
You review answers written by AI assistants. You are exacting and fair: you check facts, \
reasoning, completeness and whether the answer does what was asked. You never write the final \
answer yourself."""

# The critic's request, sent as the user message.
CRITIC_REQUEST_PROMPT = """\
Here is a conversation between a user and an AI assistant:

{conversation}

Candidate replies to the user's last message:

{candidates}

Review each candidate against what the user asked. For every one, say briefly what it gets right \
and what is wrong, missing, unclear or unnecessary. Then state what an ideal reply should contain \
and avoid."""

# Sent to proposers (as the user's turn) when the conversation ends with tool results, which they
# see only as a digest in the assistant's last message.
AFTER_TOOLS_PROMPT = """\
The tool results are in your previous message. Using them, give the user your answer now."""

# The system message of a model that judges candidates (select and rank modes).
JUDGE_SYSTEM_PROMPT = """\
You compare candidate replies written by AI assistants to the same conversation. You judge \
them on correctness first, then on how well they do what the user asked. You do not write a \
reply of your own."""

# select mode (Universal Self-Consistency): name the candidate the others agree with most.
# Every judge request ends in the verdict form read by nodes/judging.py: [[N]] or [[a, b, c]].
SELECT_REQUEST_PROMPT = """\
Here is a conversation between a user and an AI assistant:

{conversation}

Candidate replies to the user's last message:

{candidates}

Compare the candidates with each other and find the one whose final answer agrees with the \
most other candidates (the majority view); among those, prefer the clearest. You may give \
your reasons first, in a few sentences at most. Then finish with a line holding nothing but \
that candidate's number in double square brackets, for example:
[[2]]"""

# rank mode, listwise: order every candidate in one call.
RANK_REQUEST_PROMPT = """\
Here is a conversation between a user and an AI assistant:

{conversation}

Candidate replies to the user's last message:

{candidates}

Rank all {count} candidates from the best to the worst reply to the user's last message. You \
may give your reasons first, in a few sentences at most. Then finish with a line holding \
nothing but all {count} candidate numbers, each exactly once, best first, separated by commas, \
in double square brackets; for three candidates, for example:
[[3, 1, 2]]"""

# rank mode, pairwise: one of two candidates, asked in both orders to cancel position bias.
PAIRWISE_REQUEST_PROMPT = """\
Here is a conversation between a user and an AI assistant:

{conversation}

Two candidate replies to the user's last message:

{candidates}

Which candidate is the better reply to the user's last message? You may give your \
reasons first, in a few sentences at most. Then finish with a line holding nothing but the \
better one's number in double square brackets: [[1]] or [[2]]"""

# A judge asked again (retry_no_verdict) after a reply with no verdict in the form asked for;
# {form} is PICK_FORM or RANKING_FORM.
NO_VERDICT_PROMPT = """\
Your reply did not end with a verdict in the form asked for, so it cannot be counted. Answer \
again with only the final line: {form}"""

PICK_FORM = (
    "the chosen candidate's number (from 1 to {count}) in double square brackets, like [[1]]"
)
RANKING_FORM = (
    "all {count} candidate numbers, each once, best first, separated by commas, in double "
    "square brackets, like [[2, 3, 1]] for three candidates"
)
