"""Migrations are expand-then-contract (docs/upgrades.md), checked by reading their SQL.

An *expand* migration only adds: the previous release keeps working on the schema it leaves,
so hosts of both versions serve one PostgreSQL database during a rolling upgrade. Anything
else (dropping, renaming, changing a column, a new constraint on an existing table, deleting
or rewriting existing rows) belongs in a *contract* migration, marked by the header line
`-- berth: contract`, shipped a release after the code stopped using what it removes.
Released migrations are never edited: the files of every release tag, and of the commit the
upgrade tests start from, are still byte for byte in the tree.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

import pytest

from appliance.metadata.db import DIALECTS, Migration, migrations
from tests.support.earlier import EARLIEST_COMMIT
from tests.support.servers import REPO_ROOT, require_binary, unavailable

MIGRATIONS = "appliance/metadata/migrations"


def statements(sql: str) -> list[str]:
    """The statements of a script without comments, split at top-level semicolons; quotes
    ('...', "..."), and PostgreSQL dollar quotes ($$...$$, $tag$...$tag$) are kept whole."""
    out: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(sql):
        c = sql[i]
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = len(sql) if i < 0 else i
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 2
            continue
        if c in "'\"":
            end = i + 1
            while end < len(sql):
                if sql[end] == c and sql[end + 1 : end + 2] == c:
                    end += 2
                elif sql[end] == c:
                    break
                else:
                    end += 1
            buf.append(sql[i : end + 1])
            i = end + 1
            continue
        m = re.match(r"\$(\w*)\$", sql[i:])
        if m:
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            end = len(sql) if end < 0 else end + len(tag)
            buf.append(sql[i:end])
            i = end
            continue
        if c == ";":
            text = " ".join("".join(buf).split())
            if text:
                out.append(text)
            buf = []
        else:
            buf.append(c)
        i += 1
    text = " ".join("".join(buf).split())
    if text:
        out.append(text)
    return out


def _split_top(text: str) -> list[str]:
    """`text` split at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


NAME = r'"?(\w+)"?'


@dataclass
class Verdict:
    """What a migration does that the previous release could not live with."""

    problems: list[str] = field(default_factory=list)
    new_tables: set[str] = field(default_factory=set)
    new_columns: set[tuple[str, str]] = field(default_factory=set)


def check_additive(sql: str) -> Verdict:
    """Every statement of `sql` that is not additive, with the reason."""
    v = Verdict()
    for stmt in statements(sql):
        up = stmt.upper()
        if m := re.match(rf"CREATE TABLE (?:IF NOT EXISTS )?{NAME}", stmt, re.I):
            v.new_tables.add(m.group(1).lower())
        elif m := re.match(
            rf"CREATE (UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?{NAME} ON {NAME}",
            stmt,
            re.I,
        ):
            if m.group(1) and m.group(3).lower() not in v.new_tables:
                v.problems.append(f"a unique index on existing table {m.group(3)}: {stmt}")
        elif m := re.match(rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{NAME} (.*)$", stmt, re.I):
            table, rest = m.group(1).lower(), m.group(2)
            for action in _split_top(rest):
                col = re.match(rf"ADD (?:COLUMN )?(?:IF NOT EXISTS )?{NAME} (.*)$", action, re.I)
                if col is None or col.group(1).upper() in ("CONSTRAINT", "PRIMARY", "UNIQUE"):
                    v.problems.append(f"ALTER TABLE {table} {action}: not an added column")
                    continue
                spec = col.group(2).upper()
                if re.search(r"\bNOT NULL\b", spec) and "DEFAULT" not in spec:
                    v.problems.append(
                        f"column {table}.{col.group(1)} is NOT NULL without a DEFAULT: the "
                        "previous release's inserts would fail"
                    )
                if re.search(r"\b(PRIMARY KEY|UNIQUE)\b", spec):
                    v.problems.append(f"column {table}.{col.group(1)} adds a constraint")
                v.new_columns.add((table, col.group(1).lower()))
        elif m := re.match(rf"UPDATE {NAME} SET (.*?)(?: WHERE .*)?$", stmt, re.I):
            table = m.group(1).lower()
            targets = {
                a.split("=", 1)[0].strip().strip('"').lower() for a in _split_top(m.group(2))
            }
            if table not in v.new_tables and not all((table, c) in v.new_columns for c in targets):
                v.problems.append(f"UPDATE of existing columns {sorted(targets)} of {table}")
        elif m := re.match(rf"DELETE FROM {NAME}", stmt, re.I):
            if m.group(1).lower() not in v.new_tables:
                v.problems.append(f"DELETE from existing table {m.group(1)}")
        elif re.match(r"(INSERT INTO|CREATE (SEQUENCE|TYPE|EXTENSION|VIEW)|COMMENT ON) ", up):
            pass  # seed rows and new objects leave what exists alone
        else:
            v.problems.append(f"not known to be additive: {stmt[:120]}")
    return v


def _all() -> list[tuple[str, Migration]]:
    return [(d, m) for d in DIALECTS for m in migrations(d)]


@pytest.mark.parametrize(
    ("dialect", "migration"), _all(), ids=lambda x: x if isinstance(x, str) else x.name
)
def test_migrations_are_additive_unless_marked_contract(dialect: str, migration: Migration):
    problems = check_additive(migration.sql).problems
    if migration.kind == "contract":
        return  # allowed to remove; docs/upgrades.md says when such a migration may ship
    assert problems == [], (
        f"{dialect}/{migration.version:04d}_{migration.name}.sql is not additive; make it "
        "additive, or split it and mark the removing part `-- berth: contract` (docs/upgrades.md)"
    )


def test_both_dialects_agree_on_the_kind():
    kinds = {d: [(m.version, m.kind) for m in migrations(d)] for d in DIALECTS}
    assert kinds["sqlite"] == kinds["postgresql"]


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("DROP TABLE tags;", "not known to be additive"),
        ("ALTER TABLE tags DROP COLUMN pulled_at;", "not an added column"),
        ("ALTER TABLE tags RENAME COLUMN name TO label;", "not an added column"),
        ("ALTER TABLE tags ALTER COLUMN name TYPE TEXT;", "not an added column"),
        ("ALTER TABLE tags ADD COLUMN owner TEXT NOT NULL;", "NOT NULL without a DEFAULT"),
        ("ALTER TABLE tags ADD CONSTRAINT one UNIQUE (name);", "not an added column"),
        ("CREATE UNIQUE INDEX t_n ON tags (name);", "a unique index on existing table"),
        ("UPDATE tags SET name = lower(name);", "UPDATE of existing columns"),
        ("DELETE FROM tags WHERE name = 'x';", "DELETE from existing table"),
        ("DO $$ BEGIN DROP TABLE tags; END $$;", "not known to be additive"),
    ],
)
def test_the_rule_catches_what_breaks_the_previous_release(sql: str, found: str):
    problems = check_additive(sql).problems
    assert len(problems) == 1, problems
    assert found in problems[0]


def test_the_rule_lets_additions_through():
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
    CREATE UNIQUE INDEX notes_body ON notes (body);
    CREATE INDEX tags_by_name ON tags (name);
    ALTER TABLE tags ADD COLUMN note TEXT, ADD COLUMN weight INTEGER NOT NULL DEFAULT 0;
    UPDATE tags SET weight = length(name), note = 'it''s; fine';
    INSERT INTO notes (id, body) VALUES (1, 'x;y');
    DELETE FROM notes WHERE id = 2;
    """
    verdict = check_additive(sql)
    assert verdict.problems == []
    assert verdict.new_columns == {("tags", "note"), ("tags", "weight")}


def test_the_contract_header_is_read():
    assert Migration(
        1, "x", "-- drops what 0009 replaced\n-- berth: contract\nDROP TABLE a;"
    ).kind == ("contract")
    assert Migration(1, "x", "CREATE TABLE a (b TEXT);\n-- berth: contract\n").kind == "expand"


def _refs() -> list[str]:
    require_binary("git", "git")
    if not (REPO_ROOT / ".git").exists():
        unavailable("not a git checkout: released migrations cannot be compared")
    tags = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "tag", "--list", "v[0-9]*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [EARLIEST_COMMIT, *tags]


def test_released_migrations_are_never_edited():
    for ref in _refs():
        listing = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "ls-tree", "-r", "--name-only", ref, MIGRATIONS],
            capture_output=True,
            text=True,
            check=False,
        )
        if listing.returncode != 0:
            unavailable(f"commit {ref} is not in this clone (a shallow clone?)")
        names = listing.stdout.split()
        assert names, ref
        for name in names:
            then = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "show", f"{ref}:{name}"],
                capture_output=True,
                check=True,
            ).stdout
            assert (REPO_ROOT / name).read_bytes() == then, f"{name} changed since {ref}"
