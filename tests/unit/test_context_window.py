"""Fitting an agent's input into its context window: estimates, lookup, trimming."""

from __future__ import annotations

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langgraph_moa.nodes.context_window import (
    MIN_REFERENCE_TOKENS,
    estimate_tokens,
    fit_to_window,
    message_tokens,
)
from langgraph_moa.spec import models
from langgraph_moa.spec.models import context_window_for


def words(n: int, word: str = "word") -> str:
    """``n`` copies of ``word`` separated by spaces."""
    return " ".join([word] * n)


def test_estimate_tokens_is_a_quarter_of_the_characters_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


def test_message_tokens_adds_overhead_per_message() -> None:
    messages = [SystemMessage("abcd"), HumanMessage("abcdefgh"), AIMessage("")]
    assert message_tokens(messages) == (1 + 4) + (2 + 4) + (0 + 4)
    assert message_tokens([]) == 0


def test_message_tokens_reads_text_of_content_blocks() -> None:
    message = HumanMessage(content=[{"type": "text", "text": "abcdefgh"}])
    assert message_tokens([message]) == 2 + 4


def test_context_window_exact_lookup() -> None:
    assert context_window_for("openai:gpt-4o", None) == 128000
    assert context_window_for("openai:gpt-4.1-mini", None) == 1047576
    assert context_window_for("together:meta-llama/Llama-3-70b-chat-hf", None) == 8192
    assert context_window_for("local:smollm2-135m-instruct", None) == 8192


def test_context_window_unknown_is_none() -> None:
    assert context_window_for("openai:gpt-9", None) is None
    # Exact keys are not prefixes: a longer name does not match them.
    assert context_window_for("openai:gpt-4o-2024-08-06", None) is None


def test_context_window_declared_wins() -> None:
    assert context_window_for("openai:gpt-4o", 4096) == 4096
    assert context_window_for("vllm:anything", 2048) == 2048


def test_context_window_longest_prefix_wins(monkeypatch) -> None:
    table = {**models.KNOWN_CONTEXT_WINDOWS, "vllm:*": 1000, "vllm:big-*": 9000}
    monkeypatch.setattr(models, "KNOWN_CONTEXT_WINDOWS", table)
    assert context_window_for("vllm:small", None) == 1000
    assert context_window_for("vllm:big-model", None) == 9000
    assert context_window_for("ollama:big-model", None) is None


def test_window_none_changes_nothing() -> None:
    conversation = [SystemMessage("sys"), HumanMessage(words(5000))]
    references = [words(5000), words(5000)]
    kept, fitted, trim = fit_to_window(conversation, references, window=None, reserved_tokens=0)
    assert kept == conversation
    assert kept is not conversation
    assert fitted == references
    assert trim is None


def test_unchanged_when_everything_fits() -> None:
    conversation = [HumanMessage("What is 2 + 2?")]
    references = ["It is 4.", "Four."]
    kept, fitted, trim = fit_to_window(conversation, references, window=8192, reserved_tokens=1024)
    assert kept == conversation
    assert fitted == references
    assert trim is None


def test_references_cut_fairly_short_one_kept_whole() -> None:
    conversation = [HumanMessage("question")]  # 2 + 4 tokens
    short = "A short answer."
    long_a = words(400, "alpha")  # 2399 characters, 600 tokens
    long_b = words(400, "bravo")
    window = 400
    reserved = 100
    budget = window - reserved - message_tokens(conversation) - 4
    kept, fitted, trim = fit_to_window(
        conversation, [long_a, short, long_b], window=window, reserved_tokens=reserved
    )

    assert kept == conversation
    assert len(fitted) == 3
    assert fitted[1] == short
    for original, cut in ((long_a, fitted[0]), (long_b, fitted[2])):
        assert cut.endswith(" [...]")
        body = cut.removesuffix(" [...]")
        assert original.startswith(body)
        # Cut at a word boundary: the kept part ends with a whole word.
        assert body.endswith(("alpha", "bravo"))
        assert original[len(body)] == " "
    # The two long ones share what the short one left, equally.
    share = (budget - estimate_tokens(short)) // 2
    assert estimate_tokens(fitted[0]) <= share
    assert estimate_tokens(fitted[2]) <= share
    assert estimate_tokens(fitted[0]) >= share - 3

    total = sum(estimate_tokens(r) for r in fitted)
    assert total <= budget
    assert trim is not None
    assert trim["window"] == window
    assert trim["available_tokens"] == budget
    assert trim["references_before"] == sum(estimate_tokens(r) for r in (long_a, short, long_b))
    assert trim["references_after"] == total
    assert trim["references_dropped"] == 0
    assert trim["turns_dropped"] == 0


def test_cut_falls_back_to_hard_cut_without_whitespace() -> None:
    reference = "x" * 2000
    _, fitted, trim = fit_to_window([], [reference], window=104, reserved_tokens=0)
    assert trim is not None
    assert fitted == ["x" * (100 * 4 - len(" [...]")) + " [...]"]
    assert estimate_tokens(fitted[0]) == 100


def test_references_dropped_from_the_end_when_budget_is_tiny() -> None:
    references = [words(100, "first"), words(100, "second"), words(100, "third")]
    # 70 tokens left: three would get 23 each, two 35 each.
    window = 70 + 4
    _, fitted, trim = fit_to_window([], references, window=window, reserved_tokens=0)

    assert len(fitted) == 2
    assert fitted[0].startswith("first")
    assert fitted[1].startswith("second")
    assert all(estimate_tokens(r) >= MIN_REFERENCE_TOKENS - 2 for r in fitted)
    assert sum(estimate_tokens(r) for r in fitted) <= 70
    assert trim is not None
    assert trim["references_dropped"] == 1
    assert trim["available_tokens"] == 70


def test_all_references_dropped_with_no_budget() -> None:
    conversation = [HumanMessage(words(200))]
    window = message_tokens(conversation) + 4 + 10
    kept, fitted, trim = fit_to_window(
        conversation, ["one answer", "another answer"], window=window, reserved_tokens=50
    )
    assert kept == conversation
    assert fitted == []
    assert trim is not None
    assert trim["available_tokens"] == 0
    assert trim["references_dropped"] == 2
    assert trim["references_after"] == 0


def test_old_turns_dropped_newest_user_turn_and_system_kept() -> None:
    system = SystemMessage("You are helpful.")
    old_user = HumanMessage(words(100, "old"))
    old_answer = AIMessage(words(100, "reply"))
    recent_user = HumanMessage(words(20, "recent"))
    recent_answer = AIMessage(words(20, "answer"))
    newest = HumanMessage(words(300, "newest"))
    conversation = [system, old_user, old_answer, recent_user, recent_answer, newest]
    reference = "A reference answer that is short."
    # Room for everything except the two old turns, plus a reference budget of at least 32.
    needed = message_tokens([system, recent_user, recent_answer, newest]) + 4 + 40
    kept, fitted, trim = fit_to_window(
        conversation, [reference], window=needed + 100, reserved_tokens=100
    )

    assert kept == [system, recent_user, recent_answer, newest]
    assert kept[-1].content == newest.content
    assert fitted == [reference]
    assert trim is not None
    assert trim["turns_dropped"] == 2
    assert trim["available_tokens"] == 40
    assert trim["references_dropped"] == 0


def test_turns_dropped_only_as_far_as_needed() -> None:
    conversation = [HumanMessage(words(100, "old")), AIMessage("ok"), HumanMessage("next?")]
    needed = message_tokens(conversation[1:]) + 4 + MIN_REFERENCE_TOKENS
    kept, _, trim = fit_to_window(conversation, ["ref"], window=needed, reserved_tokens=0)
    assert kept == conversation[1:]
    assert trim is not None
    assert trim["turns_dropped"] == 1


def test_newest_turn_never_dropped_even_when_too_long() -> None:
    system = SystemMessage("Be brief.")
    old = HumanMessage("earlier question")
    newest = HumanMessage(words(1000))
    kept, fitted, trim = fit_to_window(
        [system, old, newest], ["some reference"], window=200, reserved_tokens=50
    )
    assert kept == [system, newest]
    assert kept[-1].content == newest.content
    assert fitted == []
    assert trim is not None
    assert trim["turns_dropped"] == 1
    assert trim["available_tokens"] == 0
    assert trim["references_dropped"] == 1
