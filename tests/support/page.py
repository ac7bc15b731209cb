"""Reading the aggregator's landing page (or a browser's dump of it) as structure, with the standard
library's HTML parser: the text of each element with an id, each table's rows, the links, the tags."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

#: Elements without an end tag.
VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "embed", "source", "wbr"}


@dataclass
class Page:
    """``text[id]``: the text inside the element with that id (whitespace collapsed); ``tables[id]``:
    the rows of the table with that id, header row first, as cell texts; ``links[id]``: its href;
    ``tags``: every element's tag name, in order; ``title``."""

    text: dict[str, str] = field(default_factory=dict)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    title: str = ""

    def column(self, table: str, header: str) -> list[str]:
        """One column of a table (without its header)."""
        head, *rows = self.tables[table]
        i = head.index(header)
        return [row[i] for row in rows]

    def records(self, table: str) -> list[dict[str, str]]:
        head, *rows = self.tables[table]
        return [dict(zip(head, row, strict=True)) for row in rows]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.open: list[tuple[str, str | None, list[str]]] = []  # (tag, id, text parts)
        self.table: str | None = None
        self.row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.page.tags.append(tag)
        if tag == "a" and a.get("id"):
            self.page.links[str(a["id"])] = str(a.get("href"))
        if tag == "table" and a.get("id"):
            self.table = a["id"]
            self.page.tables[str(self.table)] = []
        if tag == "tr" and self.table is not None:
            self.row = []
        if tag not in VOID:
            self.open.append((tag, a.get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            name, id_, parts = self.open.pop()
            text = " ".join("".join(parts).split())
            if id_:
                self.page.text[id_] = text
            if name in ("td", "th") and self.row is not None:
                self.row.append(text)
            if name == "tr" and self.row is not None and self.table is not None:
                self.page.tables[self.table].append(self.row)
                self.row = None
            if name == "table":
                self.table = None
            if name == "title":
                self.page.title = text
            if self.open:
                self.open[-1][2].append("".join(parts))
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1][2].append(data)


def parse_page(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page
