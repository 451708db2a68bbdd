from vllm_service.engine.llamacpp.text_output import TextOutput


def test_plain_text_passes_through() -> None:
    out = TextOutput()
    assert out.push(b"Hello").text == "Hello"
    assert out.push(b" world").text == " world"
    assert out.finish() == ""


def test_split_utf8_character_waits_for_its_last_byte() -> None:
    out = TextOutput()
    snowman = "\u2603".encode()
    assert out.push(snowman[:2]).text == ""
    assert out.push(snowman[2:]).text == "\u2603"


def test_stop_string_is_cut_and_not_emitted() -> None:
    out = TextOutput(("END",))
    assert out.push(b"abc E").text == "abc "
    step = out.push(b"ND tail")
    assert step.stopped
    assert step.text == ""
    assert out.stopped


def test_held_prefix_is_released_when_it_is_not_a_stop() -> None:
    out = TextOutput(("END",))
    assert out.push(b"x E").text == "x "
    assert out.push(b"Nx").text == "ENx"
    assert out.push(b" E").text == " "
    assert out.finish() == "E"


def test_earliest_of_several_stops_wins() -> None:
    out = TextOutput(("zz", "b"))
    step = out.push(b"abzz")
    assert step.stopped
    assert step.text == "a"
