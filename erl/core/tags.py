"""Tagged blocks (`<tag>...</tag>`) in untrusted model text, found in linear time.

`re.findall(r"<tag>(.*?)</tag>", text)` is quadratic on text with many opening tags and no
closing one after them: each such opening tag scans to the end of the text before the regex
moves on (`"<prompt>" * 20000` took 14 s). Cutting the text after its last closing tag
removes those scans: before that point every opening tag's scan stops at the next closing
tag, where the following search starts. The blocks found are the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


def tag_blocks(text: str, open_tag: str, close_tag: str, ignore_case: bool = False) -> Iterator[re.Match]:
    """Non-overlapping open...close blocks, left to right, each closed by the first closing
    tag after its opening tag (what the non-greedy regex finds), as matches whose group(1) is
    the body. Lazy: a caller that wants the first few or the last pays no per-block Python work."""
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    if ignore_case:  # greedy and anchored: one backward scan from the end to the last closing tag
        last = re.match(f".*{re.escape(close_tag)}", text, flags)
        stop = last.end() if last else 0
    else:
        i = text.rfind(close_tag)
        stop = i + len(close_tag) if i >= 0 else 0
    return re.compile(f"{re.escape(open_tag)}(.*?){re.escape(close_tag)}", flags).finditer(text, 0, stop)


def last_tag_block(text: str, open_tag: str, close_tag: str, ignore_case: bool = False) -> str | None:
    """The body of the last block, or None."""
    last = None
    for last in tag_blocks(text, open_tag, close_tag, ignore_case):  # the loop finds the last
        pass
    return None if last is None else last.group(1)
