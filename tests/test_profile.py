from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from embedder.errors import InvalidInputError
from embedder.profile import (
    MAX_CAPTIONS,
    AssemblyConfig,
    Profile,
    assemble_texts,
    link_hosts,
    text_hash,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_base_dir):
    return AutoTokenizer.from_pretrained(tiny_base_dir)


def test_from_dict_keeps_extra_fields_and_stringifies_ids():
    profile, dropped = Profile.from_dict({"id": 7, "biography": "hola", "followers": 12})
    assert profile.id == "7"
    assert profile.extra == {"followers": 12}
    assert dropped == 0


def test_from_dict_keeps_the_most_recent_captions():
    captions = [f"c{i}" for i in range(8)]
    profile, dropped = Profile.from_dict({"id": "a", "captions": captions})
    assert profile.captions == tuple(captions[:MAX_CAPTIONS])
    assert dropped == 3


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"biography": "x"}, "id"),
        ({"id": ""}, "id"),
        ({"id": True}, "id"),
        ({"id": "a", "biography": 5}, "biography"),
        ({"id": "a", "captions": "one caption"}, "captions"),
        ({"id": "a", "captions": ["ok", {"text": "no"}]}, "captions[1]"),
    ],
)
def test_from_dict_names_the_bad_field(record, field):
    with pytest.raises(InvalidInputError) as info:
        Profile.from_dict(record, source="in.jsonl", line=3)
    assert info.value.field == field
    assert "in.jsonl, line 3" in str(info.value)


def test_empty_profile_assembles_to_the_prefix(tokenizer):
    (text,) = assemble_texts([Profile(id="e")], tokenizer, AssemblyConfig())
    assert text == "passage: "


def test_long_first_caption_cannot_crowd_out_the_others(tokenizer):
    config = AssemblyConfig(max_tokens=40, bio_tokens=10)
    profile = Profile(
        id="p", biography="hello " * 200, captions=("paris " * 500, "tokyo", "lyon love")
    )
    (text,) = assemble_texts([profile], tokenizer, config)
    assert "post: tokyo" in text and "post: lyon love" in text
    body = text.removeprefix(config.prefix)
    bio, first = body.split("\n")[0], body.split("\n")[1]
    assert len(tokenizer.tokenize(bio.removeprefix("bio:"))) <= 10
    # 40 - 10 bio tokens = 30; the two short captions take 3, the long one gets the remaining 27
    assert len(tokenizer.tokenize(first.removeprefix("post:"))) == 27


def test_huge_bio_is_cheap_and_truncated(tokenizer):
    profile = Profile(id="big", biography="hola " * 200_000)
    (text,) = assemble_texts([profile], tokenizer, AssemblyConfig(max_tokens=32, bio_tokens=16))
    assert len(text) < 200


def test_text_hash_is_sha256():
    assert len(text_hash("x")) == 32 and text_hash("x") != text_hash("y")


def test_link_hosts_only_cuts_links_to_scheme_and_host(tokenizer):
    profile = Profile(
        id="l",
        biography="shop: https://www.loja.com.br/produtos?id=7#top",
        captions=(
            "#fome (@ Picanha do Neto) http://t.co/8Bj6zaWx",
            "HTTPS://Example.de?utm=x and http://bare.es",
            "no link here, just t.co/abc",
        ),
    )
    on = AssemblyConfig(link_hosts_only=True)
    (text,) = assemble_texts([profile], tokenizer, on)
    assert "bio: shop: https://www.loja.com.br\n" in text
    assert "post: #fome (@ Picanha do Neto) http://t.co\n" in text
    assert "post: HTTPS://Example.de and http://bare.es\n" in text
    assert text.endswith("post: no link here, just t.co/abc")  # no scheme: not a link we cut
    (plain,) = assemble_texts([profile], tokenizer, AssemblyConfig())
    assert "http://t.co/8Bj6zaWx" in plain and "?id=7#top" in plain


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("see https://x.co/a/b).", "see https://x.co)."),
        ("(https://x.co/a?b=1, today)", "(https://x.co, today)"),
        ("https://x.co/a📍Lyon 🇫🇷", "https://x.co📍Lyon 🇫🇷"),
        ('"@ana: lindo http://t.co/8Bj6zaWx"', '"@ana: lindo http://t.co"'),
        ("http://bare.es. Next", "http://bare.es. Next"),
        ("https://example.com:8080/x/y#z!", "https://example.com:8080!"),
        ("https://t.co/abc…", "https://t.co…"),
        ("https://fr.wikipedia.org/wiki/Lyon_(ville) !", "https://fr.wikipedia.org !"),
        ("(voir https://fr.wikipedia.org/wiki/Lyon_(ville))", "(voir https://fr.wikipedia.org)"),
        ("((https://x.co/a))", "((https://x.co))"),
    ],
)
def test_link_hosts_keeps_what_is_glued_after_a_link(text, cut):
    assert link_hosts(text) == cut


def test_link_hosts_only_is_recorded_only_when_on():
    # Off is the old behaviour: models saved before the setting keep their settings and version.
    assert "link_hosts_only" not in AssemblyConfig().to_dict()
    on = AssemblyConfig(link_hosts_only=True)
    assert on.to_dict()["link_hosts_only"] is True
    assert AssemblyConfig.from_dict(on.to_dict()) == on
    assert AssemblyConfig.from_dict(AssemblyConfig().to_dict()) == AssemblyConfig()


def test_mask_mentions_writes_handles_as_user_and_keeps_the_own_username(tokenizer):
    profile = Profile(
        id="m",
        username="camille.patisserie",
        biography="collab @maison.dupont | contact: hello@camille.fr",
        captions=("@Taybaybay_19 cool... (w/ @a_b, @c.d.) RT @NurinaOca: ok",),
    )
    (text,) = assemble_texts([profile], tokenizer, AssemblyConfig(mask_mentions=True))
    assert text.startswith("passage: bio: @camille.patisserie\n")  # the profile's own handle
    assert "collab @user | contact: hello@camille.fr" in text  # an e-mail is not a mention
    assert "post: @user cool... (w/ @user, @user.) RT @user: ok" in text
    assert AssemblyConfig(mask_mentions=True).to_dict()["mask_mentions"] is True
    assert "mask_mentions" not in AssemblyConfig().to_dict()


def test_ignore_names_reads_the_bio_and_captions_only(tokenizer):
    profile = Profile(
        id="n",
        username="maria.silva",
        full_name="Maria Silva",
        biography="eu tenho medo",
        captions=("bom dia",),
    )
    (whole,) = assemble_texts([profile], tokenizer, AssemblyConfig())
    (bare,) = assemble_texts([profile], tokenizer, AssemblyConfig(ignore_names=True))
    assert whole == "passage: bio: Maria Silva @maria.silva\neu tenho medo\npost: bom dia"
    assert bare == "passage: bio: eu tenho medo\npost: bom dia"
    # A profile with a name and nothing else reads as an empty one.
    (empty,) = assemble_texts(
        [Profile(id="e", full_name="Maria")], tokenizer, AssemblyConfig(ignore_names=True)
    )
    assert empty == "passage: "
    on = AssemblyConfig(ignore_names=True)
    assert on.to_dict()["ignore_names"] is True and "ignore_names" not in AssemblyConfig().to_dict()
    assert AssemblyConfig.from_dict(on.to_dict()) == on


class _WrapperOnly:
    """The Hugging Face tokenizer without its Rust tokenizer: the wrapper path of the helpers."""

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


VARIED = [
    Profile(id="a", full_name="Camille Martin", username="camille.cuisine",
            biography="Cheffe 👩‍🍳 | 📍 Lyon 🇫🇷 | https://t.co/AbC?x=1 (voir)",
            captions=("Quenelles #lyon @ami 😋", "", "paris " * 300, "tokyo\nlove")),
    Profile(id="b", biography="\u200d  \t", captions=("x",) * MAX_CAPTIONS),
    Profile(id="c", full_name="São Paulo 🇧🇷", captions=("RIO!!! www.example.com/a/b/c",)),
    Profile(id="d"),
]  # fmt: skip


@pytest.mark.parametrize(
    "config",
    [AssemblyConfig(), AssemblyConfig(max_tokens=24, bio_tokens=6, link_hosts_only=True)],
)
def test_assembly_through_the_rust_tokenizer_equals_the_wrapper(tokenizer, config):
    from embedder.profile import token_offsets

    texts = [t for p in VARIED for t in (p.biography, *p.captions)]
    fast = token_offsets(tokenizer, texts)
    slow = token_offsets(_WrapperOnly(tokenizer), texts)
    assert [list(map(tuple, s)) for s in slow] == [list(map(tuple, f)) for f in fast]
    assert any(len(f) > 100 for f in fast)  # not truncated
    assert assemble_texts(VARIED, tokenizer, config) == assemble_texts(
        VARIED, _WrapperOnly(tokenizer), config
    )


def test_the_wrapper_still_truncates_as_asked_after_the_rust_path(tokenizer):
    from embedder.encoder import token_ids
    from embedder.profile import token_offsets

    long_text = "paris " * 300
    short = token_ids(tokenizer, [long_text], 16)  # leaves truncation on in the Rust tokenizer
    assert len(short[0]) == 16
    assert short == token_ids(_WrapperOnly(tokenizer), [long_text], 16)
    # the wrapper sets its own truncation state on each call, whatever was left
    assert len(tokenizer(long_text)["input_ids"]) > 300
    assert len(token_offsets(tokenizer, [long_text])[0]) > 300
    texts = [t for p in VARIED for t in (p.biography, *p.captions)]
    assert token_ids(tokenizer, texts, 40) == token_ids(_WrapperOnly(tokenizer), texts, 40)
