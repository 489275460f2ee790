"""The SQL files `listener migrate` applies, as files: where they are (`migrations_dir`), the
numbered files in version order (`load_migrations`), the function files checked to hold their
one function and ordered so a function comes after the functions it names
(`load_functions`), a file's text split into statements (`split_statements`), and what a
statement does in a few words (`describe`, for --dry-run). Reading them touches no database;
`listener.commands.migrate` applies them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from listener.errors import MigrationError

#: The first line of a file whose statements run one by one, outside a transaction.
NO_TRANSACTION = "-- listener: no-transaction"

#: The snapshot of the whole schema beside the migration files; never applied.
SCHEMA_SNAPSHOT = "schema.sql"

#: The folder, inside the migrations folder, of the functions: one file each, re-applied when
#: it changes. Their rows in `listener_migrations` have versions `functions/NAME`.
FUNCTIONS = "functions"


_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.\"]+)", re.I
)
_DOLLAR_QUOTE = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @property
    def transactional(self) -> bool:
        """False when the file's first line opts out of its transaction."""
        first = self.sql.lstrip("\ufeff").split("\n", 1)[0]
        return first.strip().lower() != NO_TRANSACTION

    def concurrent_indexes(self) -> list[str]:
        """The names (without schema) of the indexes the file builds CONCURRENTLY."""
        names = []
        for match in _CONCURRENT_INDEX.finditer(_strip_comments(self.sql)):
            names.append(match.group(1).split(".")[-1].strip('"'))
        return names


_FUNCTION_HEAD = re.compile(r"CREATE\s+(OR\s+REPLACE\s+)?FUNCTION\s+(?:public\.)?(\w+)\s*\(", re.I)


@dataclass(frozen=True)
class FunctionFile:
    """`migrations/functions/NAME.sql`: the current definition of the function NAME."""

    name: str
    sql: str

    @property
    def version(self) -> str:
        """Its key in `listener_migrations` (no numbered file's version starts like this)."""
        return f"{FUNCTIONS}/{self.name}"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{FUNCTIONS}/{self.name}.sql"


def migrations_dir() -> Path:
    """The folder of SQL files: `migrations/` beside the package, or inside an installed wheel."""
    here = Path(__file__).resolve().parents[1]  # the package: listener/commands/.. = listener/
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations folder found near {here}")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every `NNNN_name.sql` file of the folder, in version order (not schema.sql)."""
    folder = folder or migrations_dir()
    found = []
    for path in sorted(folder.glob("*.sql")):
        if path.name == SCHEMA_SNAPSHOT:
            continue
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise MigrationError(f"migration file {path.name} does not start with a number")
        found.append(Migration(version=version, name=name, sql=path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


def load_functions(folder: Path | None = None) -> list[FunctionFile]:
    """Every file of `functions/` in the folder, each checked to define the one function it is
    named after with CREATE OR REPLACE, in the order they are applied: a function after the
    functions its file names (a SQL function's body is checked when it is created, so what it
    calls must exist), else by name."""
    functions_dir = (folder or migrations_dir()) / FUNCTIONS
    found: dict[str, FunctionFile] = {}
    for path in sorted(functions_dir.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        heads = _FUNCTION_HEAD.findall(_strip_comments(text))
        if [name.lower() for _, name in heads] != [path.stem.lower()]:
            named = ", ".join(name for _, name in heads) or "no function"
            raise MigrationError(
                f"{FUNCTIONS}/{path.name} must create the one function {path.stem}"
                f" (it creates {named})"
            )
        if not heads[0][0]:
            raise MigrationError(
                f"{FUNCTIONS}/{path.name} must use CREATE OR REPLACE FUNCTION: it is applied"
                " again whenever it changes"
            )
        found[path.stem] = FunctionFile(name=path.stem, sql=text)
    ordered: list[FunctionFile] = []
    placed: set[str] = set()

    def place(name: str, visiting: frozenset[str]) -> None:
        if name in placed or name in visiting:  # a cycle: PL/pgSQL bodies resolve at call time
            return
        body = _strip_comments(found[name].sql)
        for other in found:
            if other != name and re.search(rf"\b{re.escape(other)}\s*\(", body):
                place(other, visiting | {name})
        placed.add(name)
        ordered.append(found[name])

    for name in found:
        place(name, frozenset())
    return ordered


def split_statements(text: str) -> list[str]:
    """The statements of a SQL text, split at the semicolons outside quotes, dollar quotes and
    comments; statements that hold only comments are left out."""
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "'" or c == '"':
            backslashes = c == "'" and i > 0 and text[i - 1] in "eE"
            i += 1
            while i < n:
                if backslashes and text[i] == "\\":
                    i += 2
                elif text[i] == c:
                    if text.startswith(c * 2, i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif (
            c == "$"
            and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$"))
            and (match := _DOLLAR_QUOTE.match(text, i))
        ):
            tag = match.group(0)
            end = text.find(tag, i + len(tag))
            i = n if end < 0 else end + len(tag)
        elif c == ";":
            statements.append(text[start : i + 1])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _strip_comments(s).strip(" \t\r\n;")]


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


_DESCRIBE = [
    (
        re.compile(
            r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
            r"(\w+)\s+ON\s+(?:ONLY\s+)?([\w.]+)",
            re.I,
        ),
        "builds index {0} on {1}",
    ),
    (
        re.compile(r"DROP\s+INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?([\w.]+)", re.I),
        "drops index {0}",
    ),
    (
        re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?([\w.]+)", re.I),
        "creates table {0} (when it does not exist)",
    ),
    (
        re.compile(
            r"ALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?([\w.]+)\s+(\w+(?:\s+\w+)?)", re.I
        ),
        "alters table {0}: {1}",
    ),
    (
        re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+([\w.]+)", re.I),
        "creates or replaces function {0}",
    ),
    (
        re.compile(r"DROP\s+TRIGGER\s+(?:IF\s+EXISTS\s+)?(\w+)\s+ON\s+([\w.]+)", re.I),
        "drops trigger {0} on {1} (to create it again)",
    ),
    (
        re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?TRIGGER\s+(\w+).*?\bON\s+([\w.]+)", re.I | re.S),
        "creates trigger {0} on {1}",
    ),
    (re.compile(r"COMMENT\s+ON\s+(\w+)\s+([\w.]+)", re.I), "comments on {0} {1}"),
    (re.compile(r"(UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+([\w.]+)", re.I), "{0} rows of {1}"),
]


def describe(statement: str) -> str:
    """What a migration statement does to which table, in a few words (for --dry-run)."""
    text = " ".join(_strip_comments(statement).split())
    for pattern, words in _DESCRIBE:
        match = pattern.match(text)
        if match:
            return words.format(
                *(
                    g.lower() if i == 0 and "rows" in words else g
                    for i, g in enumerate(match.groups())
                )
            )
    return text[:60]
