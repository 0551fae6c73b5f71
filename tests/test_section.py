"""The section-config parser/writer: round trips, errors, digest checks, concurrent writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync.config.section import Section, SectionConfigFile, check_deletable, digest_of, parse, render
from asyncsync.errors import Conflict, InvalidInput, NotFound

keys = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
sids = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
# values: no line breaks, no leading/trailing whitespace (the syntax trims them), not empty
values = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)


@st.composite
def section_maps(draw: st.DrawFn) -> dict[str, Section]:
    out: dict[str, Section] = {}
    for sid in draw(st.lists(sids, unique=True, max_size=5)):
        vals: dict[str, str | list[str]] = {}
        for k in draw(st.lists(keys, unique=True, max_size=5)):
            many = draw(st.lists(values, min_size=1, max_size=3))
            vals[k] = many if len(many) > 1 else many[0]
        out[sid] = Section(draw(st.sampled_from(["remote", "datastore", "sync"])), sid, vals)
    return out


@given(section_maps())
@settings(max_examples=80, deadline=None)
def test_render_parse_round_trip(sections: dict[str, Section]) -> None:
    text = render(sections)
    parsed = parse(text)
    assert parsed == sections
    assert render(parsed) == text


def test_parse_proxmox_style_file() -> None:
    text = (
        "# comment\n"
        "remote: pbs2\n"
        "\thost pbs2.example\n"
        "    auth-id sync@pam\n"
        "\tgroup-filter type:vm\n"
        "\tgroup-filter group:ct/101\n"
        "\n"
        "remote: other\n"
        "\thost 127.0.0.1\n"
    )
    s = parse(text, types=frozenset({"remote"}))
    assert list(s) == ["pbs2", "other"]
    assert s["pbs2"].get("auth-id") == "sync@pam"
    assert s["pbs2"].get_list("group-filter") == ["type:vm", "group:ct/101"]
    assert s["other"].get("host") == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("\thost x\n", ":1:"),
        ("remote: a\n\tHOST x\n", ":2:"),
        ("remote a\n", ":1:"),
        ("remote: a\n\nremote: a\n", ":3:"),
        ("bogus: a\n", ":1:"),
    ],
)
def test_parse_errors_name_the_line(text: str, where: str) -> None:
    with pytest.raises(InvalidInput, match=where):
        parse(text, source="remote.cfg", types=frozenset({"remote"}))


def test_render_refuses_line_breaks() -> None:
    with pytest.raises(InvalidInput):
        render({"a": Section("remote", "a", {"comment": "x\ny"})})


def test_modify_with_digest(tmp_path: Path) -> None:
    f = SectionConfigFile(tmp_path / "remote.cfg", frozenset({"remote"}))
    assert f.read().digest == digest_of(b"")
    with f.modify(digest_of(b"")) as data:
        data.sections["a"] = Section("remote", "a", {"host": "h1"})
    first = f.read()
    assert first.get("a") is not None
    with f.modify(first.digest) as data:
        data.sections["a"].values["host"] = "h2"
    # a writer holding the old digest is refused, and nothing changes
    before = (tmp_path / "remote.cfg").read_bytes()
    with pytest.raises(Conflict), f.modify(first.digest) as data:
        data.sections["a"].values["host"] = "h3"
    assert (tmp_path / "remote.cfg").read_bytes() == before
    # an exception in the block writes nothing
    with pytest.raises(RuntimeError), f.modify() as data:
        data.sections.clear()
        raise RuntimeError("boom")
    assert (tmp_path / "remote.cfg").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp.")]


_WRITER = """
import sys
from pathlib import Path
from asyncsync.config.section import Section, SectionConfigFile
f = SectionConfigFile(Path(sys.argv[1]), frozenset({"job"}))
me = sys.argv[2]
for i in range(int(sys.argv[3])):
    with f.modify() as data:
        data.sections[f"{me}-{i}"] = Section("job", f"{me}-{i}", {"n": str(i)})
        c = data.sections.setdefault("counter", Section("job", "counter", {"n": "0"}))
        c.values["n"] = str(int(c.get("n") or 0) + 1)
"""


def test_require_and_check_deletable(tmp_path: Path) -> None:
    f = SectionConfigFile(tmp_path / "x.cfg", frozenset({"remote"}))
    with f.modify() as data:
        data.sections["a"] = Section("remote", "a", {"host": "h"})
    data = f.read()
    assert data.require("a", "remote").get("host") == "h"
    with pytest.raises(NotFound, match="remote 'b' is not configured"):
        data.require("b", "remote")
    assert check_deletable(iter(["port", "comment"]), ["comment", "port"]) == ["port", "comment"]
    with pytest.raises(InvalidInput, match=r"cannot delete 'host' \(deletable: comment, port\)") as exc:
        check_deletable(["port", "host"], ["comment", "port"])
    assert exc.value.field == "delete"


def test_concurrent_writers_never_lose_a_write(tmp_path: Path) -> None:
    path = tmp_path / "sync.cfg"
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name, str(n)]) for name in ("p1", "p2")
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    data = SectionConfigFile(path, frozenset({"job"})).read()
    assert data.get("counter") is not None
    assert data.sections["counter"].get("n") == str(2 * n)
    assert {f"{w}-{i}" for w in ("p1", "p2") for i in range(n)} <= set(data.sections)
