"""Tagged blocks (`<tag>...</tag>`) in untrusted model text, found in linear time.

`re.findall(r"<tag>(.*?)</tag>", text)` is quadratic on text with many opening tags and no
closing one: each opening tag scans to the end of the text before the regex moves on
(`"<prompt>" * 20000` took 14 s). Here a failed search for a closing tag ends the scan, since
no later opening tag can be closed either; the blocks found are the same.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Block(NamedTuple):
    start: int  # of the opening tag
    end: int  # after the closing tag
    body: str


def tag_blocks(text: str, open_tag: str, close_tag: str, ignore_case: bool = False) -> list[Block]:
    """Non-overlapping open...close blocks, left to right, each closed by the first closing
    tag after its opening tag (what the non-greedy regex finds)."""
    flags = re.IGNORECASE if ignore_case else 0
    opening, closing = re.compile(re.escape(open_tag), flags), re.compile(re.escape(close_tag), flags)
    blocks, pos = [], 0
    while (o := opening.search(text, pos)) is not None:
        c = closing.search(text, o.end())
        if c is None:
            break
        blocks.append(Block(o.start(), c.end(), text[o.end():c.start()]))
        pos = c.end()
    return blocks
