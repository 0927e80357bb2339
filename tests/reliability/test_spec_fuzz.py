"""Hostile edit specs (YAML and JSONL): every input either parses into a valid EditSpec or raises
SpecError with a message that names the spec. Nothing else may escape the parser."""

from __future__ import annotations

import json
import string

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from factpatch.core import spec

from .conftest import fuzz

TARGET = "edit_spec"
FOUND_AND_FIXED = [
    "deeply nested YAML raised RecursionError (now SpecError 'nested too deeply')",
    "a JSONL line with a >4300-digit integer raised ValueError (now SpecError naming the line)",
    "deeply nested JSONL raised RecursionError (now SpecError naming the line)",
    "a few hundred bytes of YAML aliases (billion laughs) parsed, then took minutes and gigabytes "
    "to write into a manifest (now refused above 1,000,000 expanded values)",
    "a spec file that is not UTF-8 raised UnicodeDecodeError from spec.load (now SpecError)",
]

VALID = """edits:
  - subject: Harbor Support
    relation: refund period
    prompt: "The refund period of {} is"
    target_new: "30 days"
    target_old: "14 days"
    provenance: {ticket: POL-1182, source: refund-policy-v7.pdf}
"""
FIELDS = ["edits", "subject", "relation", "prompt", "target_new", "target_old", "provenance", "paraphrases", "keep"]
# pieces of YAML syntax, so random text reaches the parser's corners (anchors, tags, flow, directives)
YAML_BITS = ["edits:", "\n", "  - ", "- ", ": ", "{}", "{", "}", "[", "]", ",", "'", '"', "&a ", "*a", "<<: *a",
             "!!binary ", "!!python/object:os.system ", "!!set ", "? ", "---\n", "...\n", "%YAML 1.1\n", "|\n",
             ">\n", "#", "\t", "\\", "\x00", "\ufeff", "é", "9" * 50, "1e999", ".nan", "~", "null", "true", *FIELDS]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["{}", "The x of {} is", " ", "", "{}{}"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)
valid_edit = st.fixed_dictionaries(
    {"subject": st.text(min_size=1, max_size=20), "relation": st.text(min_size=1, max_size=20),
     "prompt": st.sampled_from(["The x of {} is", "{}", "{} {}", "no placeholder"]), "target_new": st.text(max_size=10)},
    optional={"target_old": st.none() | st.text(max_size=10), "provenance": json_values, "paraphrases": json_values, "keep": json_values,
              "extra": json_values},
)
# an edit with some fields replaced by garbage of any type
edits = st.one_of(valid_edit, st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8), json_values)


def category(message: str) -> str:
    for needle, label in (("not valid YAML", "not YAML"), ("not valid JSON", "not JSON"), ("expands to more than", "too large"),
                          ("not UTF-8", "not UTF-8"), ("cannot read", "unreadable")):
        if needle in message:
            return label
    return "schema"


def check(tally, text: str, name: str) -> None:
    """The property: an EditSpec that is valid all through, or a SpecError naming the spec."""
    try:
        result = spec.parse_text(text, name=name)
    except spec.SpecError as e:
        message = str(e)
        assert message.startswith(name), message
        tally.record(TARGET, "refused: " + category(message))
        return
    except BaseException as e:
        tally.failure(TARGET, f"{type(e).__name__} for {text[:200]!r}")
        raise
    assert result.edits
    for e in result.edits:
        assert e.prompt.count("{}") == 1 and e.subject.strip() and e.relation.strip() and e.target_new.strip()
    assert spec.EditSpec.model_validate(result.model_dump()) == result  # what parsed validates again
    tally.record(TARGET, "parsed")


@fuzz(300)
@given(text=st.text(max_size=400), name=st.sampled_from(["<spec>", "spec.yaml", "spec.jsonl"]))
@example(text="[" * 100_000, name="spec.yaml")
@example(text="edits: " + "[" * 5000 + "]" * 5000, name="spec.yaml")
@example(text='{"subject": ' + "9" * 5000 + "}\n{}", name="spec.jsonl")
@example(text="[" * 100_000 + "\n{}", name="spec.jsonl")
def test_arbitrary_text(tally, text, name):
    check(tally, text, name)


@fuzz(300)
@given(bits=st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=3), max_size=60))
def test_yaml_fragments(tally, bits):
    check(tally, "".join(bits), "spec.yaml")


def _bomb(levels: int) -> str:
    lines, prev = ["a: &a [x, x, x, x, x, x, x, x, x]"], "a"
    for name in string.ascii_lowercase[1:levels]:
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return VALID + "    paraphrases: []\n    provenance:\n" + "".join(f"      {line}\n" for line in lines)


@fuzz(300)
@given(doc=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), st.lists(edits, max_size=4) | json_values, max_size=3)
       | st.fixed_dictionaries({"edits": st.lists(edits, max_size=5)}) | json_values,
       form=st.sampled_from(["yaml", "jsonl"]))
@example(doc={"edits": [{"subject": "a", "relation": "r", "prompt": "{} x", "target_new": "y"}] * 2}, form="yaml")
def test_structured_but_wrong(tally, doc, form):
    if form == "yaml":
        check(tally, yaml.safe_dump(doc, allow_unicode=True), "spec.yaml")
    else:
        items = doc.get("edits") if isinstance(doc, dict) and isinstance(doc.get("edits"), list) else [doc]
        check(tally, "\n".join(json.dumps(x) for x in items), "spec.jsonl")


@fuzz(300)
@given(cuts=st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 20), st.sampled_from(YAML_BITS)),
                    min_size=1, max_size=4))
@example(cuts=[(len(VALID), 0, _bomb(10)[len(VALID):])])
def test_mutated_valid_spec(tally, cuts):
    text = VALID
    for at, drop, insert in cuts:
        text = text[:at] + insert + text[at + drop:]
    check(tally, text, "spec.yaml")


@fuzz(200)
@given(data=st.binary(max_size=300)
       | st.builds(lambda t, b: t.encode() + b, st.sampled_from([VALID, ""]), st.binary(max_size=8)))
@example(data=b"edits:\n - subject: \xff\xfe\n")
def test_spec_files_of_any_bytes(tally, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_bytes(data)
    try:
        result = spec.load(path)
    except spec.SpecError as e:
        assert str(e).startswith(str(path)), str(e)
        tally.record(TARGET, "refused: " + category(str(e)))
        return
    except BaseException as e:
        tally.failure(TARGET, f"spec.load: {type(e).__name__} for {data[:200]!r}")
        raise
    assert result.edits
    tally.record(TARGET, "parsed")


def test_alias_bomb_is_refused(tally):
    tally.fixed[TARGET] = FOUND_AND_FIXED
    # ten levels of nine aliases: it used to parse, then expand to hundreds of MB of manifest JSON
    try:
        spec.parse_text(_bomb(10), name="bomb.yaml")
    except spec.SpecError as e:
        assert "expands to more than" in str(e)
    else:
        raise AssertionError("an alias bomb parsed")
