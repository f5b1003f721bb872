"""XMP sidecars that carry a crop in Adobe Camera Raw's fields (``crs:HasCrop``, ``crs:CropLeft``,
``crs:CropTop``, ``crs:CropRight``, ``crs:CropBottom``, ``crs:CropAngle``), which Lightroom and
darktable read, so the original photo stays untouched and the crop is applied in the editor.

Camera Raw's crop edges are fractions (0 to 1) of the photo *as stored*, before its EXIF
orientation turns it upright; our boxes are in upright pixels, so they are mapped back first.
"""

from __future__ import annotations

from collections.abc import Callable
from xml.sax.saxutils import quoteattr

# Per EXIF orientation: an upright point (u, v), as fractions of the upright photo, to the stored photo's fractions.
_TO_STORED: dict[int, Callable[[float, float], tuple[float, float]]] = {
    1: lambda u, v: (u, v),
    2: lambda u, v: (1 - u, v),
    3: lambda u, v: (1 - u, 1 - v),
    4: lambda u, v: (u, 1 - v),
    5: lambda u, v: (v, u),
    6: lambda u, v: (v, 1 - u),
    7: lambda u, v: (1 - v, 1 - u),
    8: lambda u, v: (1 - v, u),
}
CRS_NAMESPACE = "http://ns.adobe.com/camera-raw-settings/1.0/"


def stored_crop_fractions(
    box: tuple[float, float, float, float], width: int, height: int, orientation: int
) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of ``box`` (upright pixels of a ``width`` x ``height`` upright photo)
    as fractions of the stored photo, for EXIF ``orientation`` (1 to 8; anything else is taken as 1)."""
    to_stored = _TO_STORED.get(orientation, _TO_STORED[1])
    x1, y1, x2, y2 = box
    corners = [to_stored(x / width, y / height) for x, y in ((x1, y1), (x2, y2))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def crop_sidecar(
    box: tuple[float, float, float, float], width: int, height: int, orientation: int, note: str = ""
) -> str:
    """An XMP packet with ``box`` as Camera Raw's crop (no rotation), ``note`` as its description."""
    left, top, right, bottom = stored_crop_fractions(box, width, height, orientation)
    fields = {
        "HasCrop": "True",
        "CropLeft": f"{left:.6f}",
        "CropTop": f"{top:.6f}",
        "CropRight": f"{right:.6f}",
        "CropBottom": f"{bottom:.6f}",
        "CropAngle": "0",
        "CropConstrainToWarp": "0",
    }
    attributes = "\n".join(f"   crs:{name}={quoteattr(value)}" for name, value in fields.items())
    description = (
        f'\n   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{_escape(note)}</rdf:li></rdf:Alt>'
        "</dc:description>"
        if note
        else ""
    )
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'   xmlns:crs="{CRS_NAMESPACE}"\n'
        '   xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        f"{attributes}>{description}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>\n'
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
