"""The mysql node's statement guard: exactly one statement, read-only keywords when asked.

Pure text rules, no I/O: comments are removed and string literals blanked before the checks,
in one linear pass."""

import re

from errors import NodeConfigError

READ_KEYWORDS = ("SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH")
_WORD = re.compile(r"[A-Za-z_]+")
_FORBIDDEN = re.compile(r"[;\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _scan(sql: str) -> tuple[list[str], bool]:
    """`sql` with comments removed and string literals blanked; NodeConfigError for a `;` or a
    control character (other than tab, CR, LF) outside string literals, comments included.

    Returns ([the statement] or [] when empty, whether an executable comment `/*! … */` was
    seen). One pass over the text. Quotes
    follow MySQL's defaults: backslash escapes and doubled quotes in '…' and "…", `` `…` ``.
    """
    out: list[str] = []
    comments: list[str] = []
    executable = False
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == "\\" and ch != "`":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            out.append(" ? ")
            i = j + 1
        elif ch == "#" or (sql.startswith("--", i) and (i + 2 == n or sql[i + 2] in " \t\r\n")):
            end = sql.find("\n", i)
            comments.append(sql[i : n if end < 0 else end])
            i = n if end < 0 else end
            out.append(" ")
        elif sql.startswith("/*", i):
            executable = executable or sql.startswith(("/*!", "/*M!"), i)
            end = sql.find("*/", i + 2)
            comments.append(sql[i : n if end < 0 else end + 2])
            i = n if end < 0 else end + 2
            out.append(" ")
        else:
            out.append(ch)
            i += 1
    code = "".join(out)
    forbidden = _FORBIDDEN.search(code) or _FORBIDDEN.search("".join(comments))
    if forbidden:
        char = forbidden.group(0)
        raise NodeConfigError(
            "mysqlQuery must contain a single statement: "
            + ("';'" if char == ";" else f"control character U+{ord(char):04X}")
            + " outside a string literal is refused"
        )
    statement = code.strip()
    return ([statement] if statement else []), executable


def check_statement(sql: str, read_only: bool) -> str:
    """The statement's first keyword (upper case); NodeConfigError if the guard refuses it."""
    statements, executable = _scan(sql)
    if not statements:
        raise NodeConfigError("No query configured for MySQL node (mysqlQuery)")
    first = _WORD.search(statements[0].lstrip("( \t\r\n"))
    keyword = first.group(0).upper() if first else ""
    if keyword == "USE":
        raise NodeConfigError("mysqlQuery: USE is refused; set mysqlDatabase instead")
    if not read_only:
        return keyword
    if executable:
        raise NodeConfigError(
            "mysqlQuery: executable comments (/*! … */) are refused while mysqlReadOnly is on"
        )
    words = {w.upper() for w in _WORD.findall(statements[0])}
    if keyword not in READ_KEYWORDS or words & {"OUTFILE", "DUMPFILE"}:
        raise NodeConfigError(
            f"mysqlQuery: {keyword or 'this'} statement refused: with mysqlReadOnly on (the "
            "default) only SELECT, SHOW, DESCRIBE, DESC and EXPLAIN run; set mysqlReadOnly "
            "to false to allow other statements"
        )
    return keyword
