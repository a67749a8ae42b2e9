from __future__ import annotations

from modelyard.routing.contracts import RouteRequest, block_hashes, prompt_text


def test_chat_messages_become_one_templated_text_whose_head_is_stable_across_turns() -> None:
    first = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    second = [*first, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]
    one, two = prompt_text({"messages": first}), prompt_text({"messages": second})
    assert "system" in one and "You are terse." in one and "Hi" in one
    assert two.startswith(one)


def test_content_parts_prompt_and_nothing() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}
    assert "a" in prompt_text(parts)
    assert prompt_text({"prompt": "plain"}) == "plain"
    assert prompt_text({"prompt": ["first", "second"]}) == "first"
    assert prompt_text({"input": "embed me"}) == "embed me"
    assert prompt_text({}) == ""


def test_hash_chain_shares_the_head_of_prompts_with_a_common_prefix() -> None:
    common = "x" * 64 * 3
    a, b = block_hashes(common + "a" * 64, 64, 100), block_hashes(common + "b" * 64, 64, 100)
    assert len(a) == len(b) == 4
    assert a[:3] == b[:3] and a[3] != b[3]
    assert block_hashes("y" * 64 + common, 64, 100)[1:] != a[:3]  # a block's hash covers everything before it
    assert len(block_hashes("z" * 1000, 64, 5)) == 5  # capped
    assert block_hashes("short", 64, 100) == ()  # only full blocks


def test_session_from_header_else_user_field() -> None:
    payload = {"model": "m", "prompt": "p", "user": "alice"}
    assert RouteRequest.of("m", payload, {"x-session-id": "s1"}).session == "s1"
    assert RouteRequest.of("m", payload, {}).session == "alice"
    assert RouteRequest.of("m", {"prompt": "p"}, None).session is None


def test_prefix_hashes_are_computed_once_per_block_size() -> None:
    request = RouteRequest("m", {"prompt": "q" * 640})
    first = request.prefix_hashes(64, 100)
    assert request.prefix_hashes(64, 100) is first
    assert len(request.prefix_hashes(128, 100)) == 5
