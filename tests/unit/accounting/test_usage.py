from vllm_service.accounting.usage import UsageTally
from vllm_service.engine.base import Usage


def test_choices_of_one_prompt_share_it_and_prompts_add_up() -> None:
    tally = UsageTally(choices_per_prompt=2)
    tally.add(0, Usage(prompt_tokens=10, completion_tokens=3, cached_tokens=0))
    tally.add(1, Usage(prompt_tokens=10, completion_tokens=4, cached_tokens=8))
    tally.add(3, Usage(prompt_tokens=5, completion_tokens=1, cached_tokens=0))
    tally.add(2, Usage(prompt_tokens=5, completion_tokens=2, cached_tokens=4))
    assert (tally.prompt_tokens, tally.completion_tokens, tally.cached_tokens) == (15, 10, 12)


def test_every_choice_shares_one_prompt_by_default() -> None:
    tally = UsageTally()
    for choice in range(3):
        tally.add(choice, Usage(prompt_tokens=7, completion_tokens=1))
    assert (tally.prompt_tokens, tally.completion_tokens) == (7, 3)
