"""Target captions: the source caption with one object's phrase edited.

Captions name objects as noun phrases with an article, often in a list ("a red circle, a cat
and a blue star moving over a photo of a coffee cup", the demo world's grammar). Editing keeps
the list grammatical: removing an item re-joins its neighbours with ", " and " and "; the last
object becomes "nothing", as the demo world itself captions an empty scene. When the caption
does not name the object, a generic clause is appended instead, so the target caption always
says what changed.
"""

from __future__ import annotations

import re

import numpy as np

#: Colour words recognised in labels (a recoloured "black dog" becomes a "yellow dog", not a
#: "yellow black dog").
COLOUR_WORDS = (
    *("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white", "black"),
    *("grey", "gray", "purple", "pink", "brown", "violet"),
)

_LIST_ITEM_BEFORE = re.compile(r", (?=(?:a|an|the)\s[^,]*$)", re.IGNORECASE)


def with_article(label: str) -> str:
    """``label`` with its indefinite article: "a red circle", "an orange star"."""
    return f"{'an' if label[0] in 'aeiou' else 'a'} {label}"


def _find(caption: str, label: str) -> re.Match[str] | None:
    """The first mention of ``label`` with its article (a / an / the)."""
    pattern = rf"\b(?P<article>a|an|the)\s+{re.escape(label)}\b"
    return re.search(pattern, caption, re.IGNORECASE)


def _base(caption: str) -> str:
    return caption.strip() or "a video"


def _same_case(text: str, like: str) -> str:
    """``text`` with its first letter capitalised when ``like`` starts with a capital."""
    if text and like[:1].isupper():
        return text[0].upper() + text[1:]
    return text


def without_object(caption: str, label: str) -> str:
    """The caption with the phrase naming ``label`` taken out of its list."""
    match = _find(caption, label)
    if match is None:
        return f"{_base(caption)}, without the {label}"
    before, after = caption[: match.start()], caption[match.end() :]
    if before.endswith(", "):  # "A, B and C" -> "A and C"
        return before[:-2] + after
    if before.endswith(" and "):  # "A, B and C" -> "A and B"
        head = before[:-5]
        last = _LIST_ITEM_BEFORE.search(head)
        if last:
            head = head[: last.start()] + " and " + head[last.end() :]
        return head + after
    for separator in (", ", " and "):  # "A, B and C" -> "B and C"
        if after.startswith(separator):
            return before + _same_case(after[len(separator) :], match.group())
    return before + _same_case("nothing", match.group()) + after


def replaced_object(caption: str, label: str, new_label: str) -> str:
    """The caption with ``label``'s phrase naming ``new_label`` instead (same article when
    definite, else a / an to suit the new word)."""
    match = _find(caption, label)
    if match is None:
        return f"{_base(caption)}, with {with_article(new_label)} instead of the {label}"
    article = match.group("article")
    phrase = f"{article} {new_label}" if article.lower() == "the" else with_article(new_label)
    return caption[: match.start()] + _same_case(phrase, article) + caption[match.end() :]


def recoloured(caption: str, label: str, colour: str) -> str:
    """The caption with ``label`` painted ``colour`` ("a red circle" -> "a yellow circle")."""
    if _find(caption, label) is None:
        return f"{_base(caption)}, with the {label} in {colour}"
    return replaced_object(caption, label, recoloured_label(label, colour))


def recoloured_label(label: str, colour: str) -> str:
    """``label`` with its colour word (if any) replaced by ``colour``: "red circle" -> "yellow
    circle", "cat" -> "yellow cat"."""
    words = "|".join(COLOUR_WORDS)
    new, count = re.subn(rf"\b({words})\b", colour, label, count=1, flags=re.IGNORECASE)
    return new if count else f"{colour} {label}"


def label_colour(label: str) -> str | None:
    """The colour word a label names, if any."""
    words = "|".join(COLOUR_WORDS)
    match = re.search(rf"\b({words})\b", label, re.IGNORECASE)
    return match.group(1).lower() if match else None


def with_look(caption: str, phrase: str) -> str:
    """The caption of the restyled video: ``"<caption>, <phrase>"`` ("…, at night")."""
    return f"{_base(caption)}, {phrase}"


#: Where something is in a frame, by thirds of its height and width ("at the top left").
POSITION_PHRASES = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the middle", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
#: An edit region covering at least this fraction of the frame is the whole frame.
WHOLE_FRAME = 0.9


def mirror_sides(text: str) -> str:
    """``text`` as said of the mirrored (left-right flipped) frame: "left" and "right"
    swapped, as whole words ("at the top left" -> "at the top right")."""
    return _SIDE.sub(lambda m: _MIRRORED_SIDE[m.group(1)], text)


def names_a_side(text: str) -> bool:
    """Whether ``text`` says "left" or "right" (a whole word)."""
    return _SIDE.search(text) is not None


_SIDE = re.compile(r"\b(left|right)\b")
_MIRRORED_SIDE = {"left": "right", "right": "left"}


def position_phrase(mask: np.ndarray) -> str:
    """Where a region is: one of :data:`POSITION_PHRASES` for the centroid of ``mask``
    (``bool [H, W]``, or ``[T, H, W]``: the first frame where it is not empty), "everywhere"
    when it covers nearly all of the frame. Instructions that add an object say where with it
    (nothing else in the source could tell), and the instructor learns to say where an edit
    goes."""
    frame = _first_shown(mask)
    if frame.mean() >= WHOLE_FRAME:
        return "everywhere"
    row, col = _centroid_cell(frame)
    return POSITION_PHRASES[row][col]


def position_cell(mask: np.ndarray) -> tuple[int, int]:
    """The third of the frame down and across, ``(row, col)`` in 0..2, that holds the centroid
    of ``mask`` (as :func:`position_phrase` reads it): the cell its phrase names."""
    return _centroid_cell(_first_shown(mask))


def _centroid_cell(frame: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` in thirds of the centroid of a non-empty ``bool [H, W]`` frame."""
    ys, xs = np.nonzero(frame)
    return (
        min(2, int(3 * (ys.mean() + 0.5) / frame.shape[0])),
        min(2, int(3 * (xs.mean() + 0.5) / frame.shape[1])),
    )


def _first_shown(mask: np.ndarray) -> np.ndarray:
    """``mask`` (``[H, W]`` or ``[T, H, W]``) as ``bool [H, W]``: the first frame it is not
    empty in; an empty mask is an error."""
    mask = np.asarray(mask, bool)
    if mask.ndim == 3:
        visible = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
        if not len(visible):
            raise ValueError("the mask is empty in every frame")
        mask = mask[visible[0]]
    if not mask.any():
        raise ValueError("the mask is empty")
    return mask
