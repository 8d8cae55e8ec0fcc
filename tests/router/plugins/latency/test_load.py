import pytest

from kvroute.router.plugins.latency.load import EndpointLoad, Flight, LoadBook


def flight(endpoint_id: str = "a", own: int = 1000, context: int = 1100, kv: int = 1200) -> Flight:
    return Flight(endpoint_id, own, context, kv, (own, 1.0, 0.0, 0.0, 1.0), scheduled_at=0.0, learn=True)


def test_a_request_prefills_then_decodes_then_leaves_nothing_behind() -> None:
    book = LoadBook()
    first, second = flight(own=1000, context=1100, kv=1200), flight(own=300, context=350, kv=400)
    book.charge(first)
    book.charge(second)
    assert book.get("a") == EndpointLoad(
        prefill_tokens=1300, prefilling=2, decoding=0, context_tokens=0, kv_tokens=1600
    )

    book.first_token(first, 0.0)
    assert book.get("a") == EndpointLoad(
        prefill_tokens=300, prefilling=1, decoding=1, context_tokens=1100, kv_tokens=1600
    )

    book.complete(first, 0.0)
    assert book.get("a") == EndpointLoad(prefill_tokens=300, prefilling=1, decoding=0, context_tokens=0, kv_tokens=400)
    book.complete(second, 0.0)  # cancelled before its first token
    assert book.get("a") == EndpointLoad()
    assert book.get("a").idle
    assert len(book) == 0


def test_every_transition_is_idempotent() -> None:
    book = LoadBook()
    done, other = flight(), flight(own=10, context=20, kv=30)
    book.charge(done)
    book.charge(other)
    book.first_token(done, 0.0)
    book.first_token(done, 0.0)
    book.complete(done, 0.0)
    book.complete(done, 0.0)  # a second completion
    book.first_token(done, 0.0)  # a chunk after completion
    book.move(done, "b", 0.0)  # a fallback reported after completion

    assert book.get("a") == EndpointLoad(prefill_tokens=10, prefilling=1, kv_tokens=30)
    assert book.get("b") == EndpointLoad()
    assert (done.done, done.endpoint_id) == (True, "a")
    assert len(book) == 1


def test_a_prefilling_request_moved_to_a_fallback_is_charged_there_only() -> None:
    book = LoadBook()
    moved = flight(own=500, context=600, kv=700)
    book.charge(moved)
    book.move(moved, "a", 0.0)  # same endpoint: nothing to do
    assert book.get("a").prefill_tokens == 500
    book.move(moved, "b", 0.0)

    assert book.get("a") == EndpointLoad()
    assert book.get("b") == EndpointLoad(prefill_tokens=500, prefilling=1, kv_tokens=700)
    assert moved.endpoint_id == "b" and not moved.done
    book.first_token(moved, 0.0)
    book.complete(moved, 0.0)
    assert len(book) == 0


def test_a_decoding_request_moves_as_a_decoding_request() -> None:
    book = LoadBook()
    moved = flight(own=500, context=600, kv=700)
    book.charge(moved)
    book.first_token(moved, 0.0)
    book.move(moved, "b", 0.0)

    assert book.get("b") == EndpointLoad(decoding=1, context_tokens=600, kv_tokens=700)
    assert len(book) == 1
    book.complete(moved, 0.0)
    assert len(book) == 0


def test_reading_an_unknown_endpoint_stores_nothing() -> None:
    book = LoadBook()
    book.get("a").prefill_tokens += 5  # a copy: the book is not changed through it
    assert book.get("a") == EndpointLoad()
    assert len(book) == 0


def test_the_head_of_the_queue_progresses_at_the_prefill_speed_and_the_next_request_starts_after_it() -> None:
    book = LoadBook()
    first = flight("a", own=1000)  # scheduled at 0
    second = flight("a", own=500)
    book.charge(first)
    book.charge(second)
    load = book.get("a")
    # 1,500 tokens queued; at 1 ms per token the head has done 400 after 0.4 s, never more than its own 1,000.
    assert load.remaining_prefill(0.0, 0.001) == 1500
    assert load.remaining_prefill(0.4, 0.001) == 1100
    assert load.remaining_prefill(5.0, 0.001) == 500
    book.first_token(first, 2.0)  # the head's first token: the second request is the head from t = 2 s
    assert load.remaining_prefill(2.1, 0.001) == pytest.approx(400)
    book.complete(second, 3.0)
    assert book.get("a").remaining_prefill(3.0, 0.001) == 0


def test_the_loads_of_many_endpoints_are_none_where_nothing_is_charged() -> None:
    book = LoadBook()
    charged = flight("a")
    book.charge(charged)
    loads = book.charged(["b", "a", "c"])
    assert loads == [None, book.get("a"), None]
    assert loads[1] is book.charged(["a"])[0]  # the book's own record, not a copy

    book.complete(charged, 0.0)
    assert book.charged(["a"]) == [None]
