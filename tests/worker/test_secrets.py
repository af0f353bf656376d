"""Secrets: loading them from the worker's environment, and masking them out of logs."""

from __future__ import annotations

import base64
import pickle
import re
import time
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.secrets import MASK, Masker, MissingSecret, load_secrets

# -- load_secrets ---------------------------------------------------------------------


def test_load_secrets_reads_prefixed_variables():
    env = {"CONVEYOR_SECRET_TOKEN": "t0ken", "CONVEYOR_SECRET_db_pass": "pw!", "TOKEN": "other"}
    assert load_secrets(["TOKEN", "db_pass"], env) == {"TOKEN": "t0ken", "db_pass": "pw!"}


def test_load_secrets_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("CONVEYOR_SECRET_API_KEY", "k-123")
    assert load_secrets(["API_KEY"]) == {"API_KEY": "k-123"}


def test_no_secrets_needs_nothing():
    assert load_secrets([], {}) == {}


def test_missing_secret_lists_every_missing_name_and_its_variable():
    env = {"CONVEYOR_SECRET_PRESENT": "value-that-must-not-show", "CONVEYOR_SECRET_EMPTY": ""}
    with pytest.raises(MissingSecret) as info:
        load_secrets(["A", "PRESENT", "B", "EMPTY", "A"], env)
    assert info.value.names == ["A", "B", "EMPTY"]
    message = str(info.value)
    for name in ("A", "B", "EMPTY"):
        assert f"CONVEYOR_SECRET_{name}" in message
    assert "PRESENT" not in message
    assert "value-that-must-not-show" not in message


def test_missing_secret_survives_pickling():
    # Celery pickles exceptions between processes.
    error = pickle.loads(pickle.dumps(MissingSecret(["X", "Y"])))
    assert error.names == ["X", "Y"]
    assert "CONVEYOR_SECRET_Y" in str(error)


def test_names_are_case_sensitive():
    with pytest.raises(MissingSecret):
        load_secrets(["token"], {"CONVEYOR_SECRET_TOKEN": "x"})


@pytest.mark.parametrize("name", ["", "a-b", "1X", "A B", "X=Y"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid secret name"):
        load_secrets([name], {})


# -- Masker ---------------------------------------------------------------------------


def test_plain_occurrences_are_masked():
    m = Masker(["hunter2"])
    assert m.mask("password: hunter2, again hunter2!") == f"password: {MASK}, again {MASK}!"


def test_text_without_secrets_is_unchanged():
    m = Masker(["hunter2"])
    assert m.mask("nothing to see: hunter 2") == "nothing to see: hunter 2"
    assert Masker([]).mask("hunter2") == "hunter2"


def test_regex_characters_in_secrets_are_literal():
    m = Masker(["a.b*c(d)"])
    assert m.mask("x a.b*c(d) y aXbbc(d)") == f"x {MASK} y aXbbc(d)"


def test_each_line_of_a_multiline_secret_is_masked():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\r\n  hkiG9w0BAQEFAASC\n-----END KEY-----\n"
    m = Masker([key])
    assert m.mask("MIIEvQIBADANBgkq") == MASK
    assert m.mask("    hkiG9w0BAQEFAASC") == f"    {MASK}"
    assert m.mask("-----END KEY-----") == MASK


def test_base64_forms_are_masked():
    secret = "a?>b?>c~~"
    m = Masker([secret])
    standard = base64.b64encode(secret.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(secret.encode()).decode()
    assert standard != urlsafe  # the secret was chosen so the alphabets differ
    assert m.mask(f"echo {standard}") == f"echo {MASK}"
    assert m.mask(f"echo {urlsafe}") == f"echo {MASK}"


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:", "someone:"])
def test_secret_inside_a_longer_base64_string_is_masked(prefix):
    secret = "correct-horse-battery"
    m = Masker([secret])
    encoded = base64.b64encode(f"{prefix}{secret}".encode()).decode()
    masked = m.mask(f"Authorization: Basic {encoded}")
    head, sep, tail = masked.removeprefix("Authorization: Basic ").partition(MASK)
    assert sep == MASK
    # What stays visible encodes the prefix (plus one mixed character) and the padding.
    assert len(head) <= len(base64.b64encode(prefix.encode()).rstrip(b"=")) + 1
    assert len(tail.rstrip("=")) <= 1


def test_url_encoded_forms_are_masked():
    secret = "p@ss w/rd!"
    m = Masker([secret])
    assert m.mask(f"https://me:{quote(secret, safe='')}@host/") == f"https://me:{MASK}@host/"
    assert m.mask(f"password={quote_plus(secret)}&x=1") == f"password={MASK}&x=1"
    lower = quote(secret, safe="").replace("%2F", "%2f")
    assert m.mask(lower) == MASK


def test_overlapping_secrets_are_fully_hidden():
    m = Masker(["abcdef", "defghi"])
    assert m.mask("xx abcdefghi yy") == f"xx {MASK} yy"
    assert m.mask("defghi abcdef") == f"{MASK} {MASK}"


def test_a_secret_containing_another_is_masked_whole():
    m = Masker(["pass", "password123"])
    assert m.mask("password123") == MASK
    assert m.mask("pass word") == f"{MASK} word"


def test_short_secrets_are_not_masked():
    m = Masker(["a", "42", "xyz"])
    assert m.mask("a 42 xyz") == f"a 42 {MASK}"
    assert Masker(["xyz"], min_length=4).mask("xyz") == "xyz"


def test_secret_split_across_lines_is_only_masked_per_line():
    # Documented limit: masking works on one line at a time.
    m = Masker(["hunter2"])
    assert [m.mask(part) for part in ("hun", "ter2")] == ["hun", "ter2"]


def test_repr_does_not_reveal_secrets():
    assert "hunter2" not in repr(Masker(["hunter2"]))


def test_min_length_must_be_positive():
    with pytest.raises(ValueError):
        Masker(["x"], min_length=0)


SAFE_TEXT = st.text(alphabet=st.characters(blacklist_characters="*", blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(
    secrets=st.lists(st.text(alphabet="abcXYZ01 :@/+=", min_size=3, max_size=12), min_size=1, max_size=3),
    pieces=st.lists(SAFE_TEXT, min_size=1, max_size=4),
)
def test_no_secret_survives_masking(secrets, pieces):
    # '*' is left out: a secret made of stars would "appear" in the mask itself.
    text = "".join(p + secrets[i % len(secrets)] for i, p in enumerate(pieces))
    masked = Masker(secrets).mask(text)
    for secret in secrets:
        assert secret not in masked


def test_masking_is_fast():
    secrets = [f"secret-number-{i}-{'x' * i}" for i in range(20)]
    m = Masker(secrets)
    lines = [f"step {i}: compiled module_{i}.py in 0.{i % 10}s, cache hit ratio 97%" for i in range(20_000)]
    lines[5_000] += " " + secrets[3]
    started = time.perf_counter()
    masked = [m.mask(line) for line in lines]
    elapsed = time.perf_counter() - started
    assert masked[5_000].endswith(MASK)
    assert sum(MASK in line for line in masked) == 1
    assert elapsed < 1.0, f"masking 20k lines took {elapsed:.2f}s"


def test_masked_output_keeps_surrounding_text():
    m = Masker(["tok3n"])
    masked = m.mask("before tok3n middle tok3ntok3n after")
    assert re.fullmatch(r"before \*{4} middle \*{4,8} after", masked)


# -- LineMasker: one line masked in pieces --------------------------------------------------


def feed_in_pieces(masker: Masker, line: str, cuts: list[int]) -> list[str]:
    """What a LineMasker returns for `line` cut at `cuts` (the last piece is final)."""
    stream = masker.stream()
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(line))), len(line)]
    pieces = [line[a:b] for a, b in zip(bounds, bounds[1:])] or [""]
    return [stream.feed(piece, final=i == len(pieces) - 1) for i, piece in enumerate(pieces)]


def test_a_secret_straddling_any_cut_is_masked():
    secret = "s3cr3t-T0KEN-value"
    m = Masker([secret])
    line = '{"a":1,"token":"' + secret + '","b":2}'
    start = line.index(secret)
    for cut in range(len(line) + 1):
        out = feed_in_pieces(m, line, [cut])
        assert "".join(out) == m.mask(line), cut
        # No returned piece holds a part of the secret that a reader could join up.
        assert all(secret[:4] not in piece and secret[-4:] not in piece for piece in out), (cut, out)
    assert start > 0


def test_held_back_text_is_at_most_the_longest_form_minus_one():
    m = Masker(["abcdefgh"])
    stream = m.stream()
    assert stream.feed("x" * 100) == "x" * (100 - (m.longest - 1))
    assert stream.pending
    assert stream.feed("", final=True) == "x" * (m.longest - 1)
    assert not stream.pending


def test_a_chain_of_overlapping_secrets_across_many_cuts_is_one_mask():
    # `aaaa` repeated: every position starts a match, so the whole run is one span that
    # crosses every cut; it must come out as a single ****, never as text.
    m = Masker(["aaaa"])
    line = "x" + "a" * 50 + "y"
    out = feed_in_pieces(m, line, list(range(3, 52, 3)))
    assert "".join(out) == "x****y" == m.mask(line)


def test_no_secrets_means_pieces_pass_straight_through():
    stream = Masker([]).stream()
    assert stream.feed("abc") == "abc" and not stream.pending


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(st.text(alphabet="ab:/+=cX", min_size=3, max_size=10), min_size=1, max_size=3),
    filler=st.lists(st.text(alphabet="abcXY :/", max_size=12), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
)
def test_pieces_joined_equal_the_whole_line_masked(secrets, filler, cuts):
    """Wherever the cuts fall, the pieces say exactly what masking the whole line says."""
    line = "".join(f + secrets[i % len(secrets)] for i, f in enumerate(filler))
    m = Masker(secrets)
    out = feed_in_pieces(m, line, cuts)
    assert "".join(out) == m.mask(line)
    for secret in secrets:
        assert secret not in "".join(out)
